"""``python -m jobs.make_shards --from parquet | hf``: every row once, in order, as a tar sample
the pipeline reads with the same image bytes, label and source key; resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.make_shards import main
from pipeline.config import InputConfig
from pipeline.shards import expand_shards, iter_samples
from pipeline.storage import Storage
from pipeline.tables import expand_units, sample_reader
from tests.zoo.inputs import write_hf_hub_parquet, write_hf_saved, write_parquet_files

pytest.importorskip("datasets")


def _tar_samples(out: Path) -> list:
    return [s for url in expand_shards(str(out / "*.tar")) for s in iter_samples(url)]


@pytest.mark.parametrize("layout", ["parquet", "hf_saved", "hf_hub"])
def test_tables_to_shards(tmp_path: Path, capsys, layout: str) -> None:
    if layout == "parquet":
        write_parquet_files(tmp_path / "in")
        source, fmt, flag = str(tmp_path / "in" / "*.parquet"), "parquet", "parquet"
    else:
        writer = write_hf_saved if layout == "hf_saved" else write_hf_hub_parquet
        source, fmt, flag = writer(tmp_path / "in"), "hf_datasets", "hf"
    out = tmp_path / "shards"
    argv = ["--from", flag, source, "--out", str(out), "--shard-size", "3", "--no-progress"]
    assert main(argv) == 0
    assert "4 samples, 0 classes in 2 shards (2 written, 0 already there)" in capsys.readouterr().out
    cfg = InputConfig(shards=source, format=fmt)
    rows = [s for u in expand_units(cfg) for s in sample_reader(cfg)(u, Storage())]
    tars = _tar_samples(out)
    assert [s.image_bytes for s in tars] == [s.image_bytes for s in rows]  # JPEGs copied byte for byte
    assert [s.label for s in tars] == [s.label for s in rows]
    if fmt == "parquet":
        assert [s.key for s in tars] == [s.key for s in rows] == [s.meta["key"] for s in tars]
    else:  # row numbers within each file, prefixed by the file's name
        assert [s.key for s in tars][:2] == [f"{Path(expand_units(cfg)[0]).stem}/{i}" for i in (0, 1)]
    assert main(argv) == 0  # resume: both shards are there
    assert "(0 written, 2 already there)" in capsys.readouterr().out
