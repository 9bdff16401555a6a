"""An evaluation's tables as files beside the results: CSV for people and spreadsheets, Parquet for
DuckDB, pandas and Ray Data (neither needs this package to be read)."""

from __future__ import annotations

import io
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.schema import table_to_parquet_bytes
from pipeline.storage import Storage, join


def write_table_files(out_uri: str, tables: Mapping[str, pa.Table], storage: Storage = Storage()) -> list[str]:
    """Each ``name: table`` as ``<out>/<name>.csv`` and ``<out>/<name>.parquet``; returns the URLs."""
    urls = []
    for name, table in tables.items():
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        for ext, data in (("csv", buf.getvalue()), ("parquet", table_to_parquet_bytes(table))):
            url = join(out_uri, f"{name}.{ext}")
            storage.write_bytes(url, data)
            urls.append(url)
    return urls
