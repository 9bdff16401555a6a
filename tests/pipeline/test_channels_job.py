"""``python -m jobs.channels`` on the demo shards (in-process, on the session's Ray cluster): the
channel masks, channel-saliency maps and both feature inversions as PNG columns, read back with
plain pyarrow; the report shows them; a wrong method is refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.channels import main


@pytest.mark.usefixtures("ray_cluster")
def test_channel_job_writes_masks_maps_and_inversions(demo_model_and_data, tmp_path: Path) -> None:
    assets = demo_model_and_data.assets
    out = tmp_path / "channels"
    assert main(["--config", "configs/methods/demo_extremal_channels.yaml",
                 "--set", f"input.shards={assets.root}/shards/demo-{{000000..000001}}.tar",
                 "--set", f"model.checkpoint={assets.checkpoint}", "--set", f"output.uri={out}",
                 "--set", "extremal.max_iter=10", "--inversion", "max_iter=30", "--inversion", "init_scale=0.1"]) == 0
    table = pq.read_table(out / "parts")
    assert table.num_rows == 16 and table.column("error").null_count == 16
    rows = table.to_pylist()
    for row in rows:
        assert row["method"] == "extremal_channels" and row["layer"] == "features.5"
        assert np.asarray(row["channel_masks"]).shape == (3, 32)  # [A, K]
        assert row["optimal_area"] in [pytest.approx(a) for a in (0.05, 0.1, 0.2)]
        images = [np.asarray(Image.open(io.BytesIO(row[c]))) for c in ("inversion_original", "inversion_perturbed")]
        assert all(i.shape == (64, 64, 3) and i.dtype == np.uint8 for i in images)
        assert np.abs(images[0].astype(int) - images[1].astype(int)).mean() > 1  # the mask removed channels
    maps = table.column("maps").combine_chunks().to_numpy_ndarray()
    assert maps.shape == (16, 3, 64, 64)

    from jobs.report import main as report

    assert report(["--input", str(out), "--out", str(out / "report"), "--per-class", "1"]) == 0
    page = (out / "report" / "index.html").read_text()
    assert page.count("inversion of the original") >= 2 and page.count("inversion of the perturbed activations") >= 2
    assert 'id="channels"' in page

    # The inversion settings are part of what made the rows: other settings are another config.
    again = ["--config", "configs/methods/demo_extremal_channels.yaml",
             "--set", f"input.shards={assets.root}/shards/demo-{{000000..000001}}.tar",
             "--set", f"model.checkpoint={assets.checkpoint}", "--set", f"output.uri={out}",
             "--set", "extremal.max_iter=10", "--inversion", "init_scale=0.1"]
    assert main([*again, "--inversion", "max_iter=31"]) == 1
    assert main([*again, "--inversion", "max_iter=30"]) == 0  # the same settings resume


def test_channel_job_refuses_another_method(tmp_path: Path, capsys) -> None:
    assert main(["--config", "configs/demo.yaml", "--set", f"output.uri={tmp_path}"]) == 2
    assert "extremal_channels" in capsys.readouterr().err
    assert main(["--config", "configs/methods/demo_extremal_channels.yaml", "--inversion", "steps=3"]) == 2
