"""Reading results back without Ray: every map storage format maps back to the original image,
the saliency argmax, and plain DuckDB reads the parts. (The pointing game: tests/evaluation.)"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from pipeline.commit import commit_part
from pipeline.io.parts import maps_at_original_size, read_results, row_stored_maps, saliency_argmax
from pipeline.models import load_model
from pipeline.schema import rows_to_table
from pipeline.tasks import process_shard
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import image_samples, write_shard


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: one thread is several times faster
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "overrides",
    [
        ("output.map_format=png",),  # list<binary> of PNGs
        ("model.preprocessing.crop=null", "model.preprocessing.resize=24"),  # flat list<uint8>, per-row shape
    ],
    ids=["png", "no-crop"],
)
def test_maps_map_back_in_every_storage_format(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    shard = write_shard(tmp_path / "r-000000.tar", image_samples(0, 2))
    out = str(tmp_path / "out")
    cfg = tiny_config(shard, out, *overrides)
    process_shard(shard, cfg, load_model(cfg.model))
    table = read_results(out)
    for row in table.to_pylist():
        stored = row_stored_maps(row)
        assert stored.dtype == np.uint8 and stored.shape == (2, row["map_height"], row["map_width"])
        assert maps_at_original_size(row).shape == (2, 40, 48)
    df = table.to_pandas()
    np.testing.assert_allclose(maps_at_original_size(df.iloc[1]), maps_at_original_size(table.to_pylist()[1]))


def _row(key: str, mask: np.ndarray, **extra) -> dict:
    h, w = mask.shape
    return {"key": key, "areas": [0.1], "maps": mask[None].astype(np.float32), "width": w, "height": h,
            "resized_width": w, "resized_height": h, "crop_top": 0, "crop_left": 0, **extra}


def test_saliency_argmax_and_duckdb(tmp_path: Path) -> None:
    hit, miss = np.zeros((16, 16)), np.zeros((16, 16))
    hit[5, 6] = 1.0  # argmax at x=6, y=5
    miss[15, 15] = 1.0
    rows = [_row("a", hit), _row("b", miss), {"key": "c", "error": "cannot decode image"}]
    out = str(tmp_path / "out")
    commit_part(out, "x.tar", rows_to_table(rows, "tensor", (1, 16, 16)))
    good = [r for r in read_results(out).to_pylist() if r["error"] is None]
    assert [saliency_argmax(r) for r in good] == [(6, 5), (15, 15)]

    parts = f"{out}/parts/*.parquet"
    assert duckdb.sql(f"select count(*) from read_parquet('{parts}') where error is null").fetchall() == [(2,)]
