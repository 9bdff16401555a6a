"""Parquet and Hugging Face datasets inputs (``pipeline.tables``): units of work, rows as
samples, error rows for bad rows, one ShardReadError for a bad file, row groups streamed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.shards import ShardReadError
from pipeline.storage import Storage
from pipeline.tables import BATCH_ROWS, expand_units, iter_any_samples, iter_table_samples, sample_reader
from tests.shard_factory import encode_image, synthetic_image, truncate_file
from tests.zoo.inputs import write_hf_hub_parquet, write_hf_saved, write_parquet_files

pytest.importorskip("datasets")


def _keys_labels(cfg: InputConfig) -> list[list[tuple[str, int | None, str | None]]]:
    read = sample_reader(cfg)
    return [[(s.key, s.label, s.error) for s in read(u, Storage())] for u in expand_units(cfg)]


def test_img2dataset_parquet_rows_are_samples(tmp_path: Path) -> None:
    write_parquet_files(tmp_path)
    cfg = InputConfig(shards=str(tmp_path / "*.parquet"), format="parquet")
    assert [Path(u).name for u in expand_units(cfg)] == ["00000.parquet", "00001.parquet"]
    assert _keys_labels(cfg) == [[("s000_0000", None, None), ("s000_0001", None, None)],
                                 [("s001_0000", None, None), ("s001_0001", None, None)]]


@pytest.mark.parametrize("layout", ["save_to_disk", "hub_parquet"])
def test_hf_datasets_folder_units_are_its_files(tmp_path: Path, layout: str) -> None:
    folder = write_hf_saved(tmp_path / "ds") if layout == "save_to_disk" else write_hf_hub_parquet(tmp_path / "ds")
    cfg = InputConfig(shards=folder, format="hf_datasets")
    names = [Path(u).name for u in expand_units(cfg)]
    assert names == (["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"] if layout == "save_to_disk"
                     else ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"])
    # Keys are row numbers within each file; labels from the ClassLabel feature.
    assert _keys_labels(cfg) == [[("0", 0, None), ("1", 1, None)], [("0", 0, None), ("1", 1, None)]]


def test_bad_rows_become_error_rows_and_the_rest_is_read(tmp_path: Path) -> None:
    good = encode_image(synthetic_image(0))
    table = pa.table({
        "key": ["a", "b", None, "a", "c", "d"],
        "jpg": pa.array([good, None, good, good, b"", good], pa.binary()),
        "label": pa.array(["1", "2", "3", "4", "x", None]),
    })
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    samples = list(iter_table_samples(str(tmp_path / "t.parquet"), Storage(), "jpg", "key"))
    assert [(s.key, s.label, s.error) for s in samples] == [
        ("a", 1, None),
        ("b", 2, "no image"),
        ("row-2", 3, "no key"),
        ("a", 4, "duplicate key 'a': an earlier row of this file has it"),
        ("c", None, "no image; label 'x' is not an integer class index"),
        ("d", None, None),
    ]
    assert samples[0].image_bytes == good


def test_missing_column_and_damaged_file_fail_the_unit(tmp_path: Path) -> None:
    write_parquet_files(tmp_path)
    url = str(tmp_path / "00000.parquet")
    with pytest.raises(ShardReadError, match=r"no column 'image'.*columns: key, jpg, status") as err:
        list(iter_table_samples(url, Storage(), "image", "key"))
    assert err.value.permanent and "\n" not in str(err.value)
    truncate_file(url, Path(url).stat().st_size - 20)
    with pytest.raises(ShardReadError, match="cannot read .*00000.parquet after 0 rows"):
        list(iter_table_samples(url, Storage(), "jpg", "key"))
    with pytest.raises(ShardReadError, match="FileNotFoundError") as err:
        list(iter_table_samples(str(tmp_path / "nope.parquet"), Storage(), "jpg", "key"))
    assert err.value.permanent


def test_configured_columns_and_embedded_paths(tmp_path: Path) -> None:
    """Other column names; an HF image stored only as a path is an error row (never read)."""
    img = {"bytes": encode_image(synthetic_image(1)), "path": None}
    table = pa.table({"id": ["x", "y"], "picture": [img, {"bytes": None, "path": "/etc/passwd"}], "cls": [3, 1]})
    pq.write_table(table, tmp_path / "p.parquet")
    cfg = InputConfig(shards=str(tmp_path / "p.parquet"), format="parquet", image_column="picture", key_column="id")
    assert _keys_labels(cfg) == [[("x", 3, None), ("y", 1, "image not embedded (only a path: '/etc/passwd')")]]


def test_row_groups_are_streamed(tmp_path: Path) -> None:
    """The reader takes a file in record batches, never whole: with the second row group's image
    bytes damaged, the first row group's rows are read, then the unit fails (as a truncated tar
    does)."""
    image = encode_image(synthetic_image(0, 8, 8))
    n = BATCH_ROWS + 1
    table = pa.table({"key": [f"k{i}" for i in range(n)], "jpg": pa.array([image] * n, pa.binary())})
    url = str(tmp_path / "t.parquet")
    pq.write_table(table, url, row_group_size=BATCH_ROWS, compression="none")
    chunk = pq.ParquetFile(url).metadata.row_group(1).column(1)  # the jpg column of the last row
    with open(url, "r+b") as f:  # its data page's header
        f.seek(chunk.data_page_offset)
        f.write(b"\xff" * 8)
    rows = iter_table_samples(url, Storage(), "jpg", "key")
    assert [next(rows).error for _ in range(BATCH_ROWS)] == [None] * BATCH_ROWS
    with pytest.raises(ShardReadError, match=f"after {BATCH_ROWS} rows"):
        next(rows)


def test_units_read_without_the_config(tmp_path: Path) -> None:
    """The report reads originals knowing only the unit's URL: tables by suffix, tars as tars."""
    parquet = write_parquet_files(tmp_path / "p")[1]
    arrow = expand_units(InputConfig(shards=write_hf_saved(tmp_path / "h"), format="hf_datasets"))[0]
    assert [(s.key, s.error) for s in iter_any_samples(parquet)] == [("s001_0000", None), ("s001_0001", None)]
    assert [(s.key, s.label) for s in iter_any_samples(arrow)] == [("0", 0), ("1", 1)]
