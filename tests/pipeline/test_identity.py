"""One identity per sample, and no silent wrong answer: each case a defect a hostile probe found,
on real shards and real parts (no Ray; the cheap ``center`` method).

A sample is ``(shard, key)`` with the shard's canonical URL: a key repeated inside a shard keeps
its first sample's annotations, a key in two shards is two samples, a shard spelled two ways is one
shard; labels are read only by the modes that use them; a folder that is not this project's output
is never written into; a factory's weights are in the config hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.commit import OutputConflictError, check_output, commit_part, load_done
from pipeline.config_hash import config_hash
from pipeline.evaluation.pointing_run import shard_annotations
from pipeline.io.parts import read_results
from pipeline.lease import LeaseToken
from pipeline.models import load_model
from pipeline.report.images import load_originals
from pipeline.report.scan import locate_rows
from pipeline.schema import rows_to_table
from pipeline.shards import expand_shards, shard_id
from pipeline.storage import Storage
from pipeline.tasks import process_shard
from pipeline.worker import ShardWorker
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import encode_image, synthetic_image, write_shard


def _sample(key: str, seed: int, **extra) -> dict:
    return {"__key__": key, "jpg": encode_image(synthetic_image(seed)), **extra}


def test_a_repeated_key_is_scored_against_its_first_samples_annotations(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "s.tar", [
        _sample("a", 1, json={"box": "first"}), _sample("b", 2, json={"box": "b"}), _sample("a", 3, json={"box": "repeat"}),
    ])
    # The job's row for "a" is the first sample's (the repeat is an error row): so is its annotation.
    assert shard_annotations(shard) == {"a": {"box": "first"}, "b": {"box": "b"}}


def test_a_key_in_two_shards_is_two_samples_in_the_report(tmp_path: Path, tiny_model) -> None:
    shards = [write_shard(tmp_path / f"s{i}.tar", [_sample("x", 10 + i, cls=1)]) for i in range(2)]
    out = str(tmp_path / "out")
    cfg = tiny_config(shards, out, "method.name=center")
    for s in shards:
        process_shard(s, cfg, tiny_model)
    rows = read_results(out).to_pylist()
    assert sorted(r["shard"] for r in rows) == sorted(shards) and {r["key"] for r in rows} == {"x"}
    originals = load_originals(rows)
    assert set(originals) == {(s, "x") for s in shards}
    a, b = (np.asarray(originals[(s, "x")][0]) for s in shards)
    assert not np.array_equal(a, b)  # each row over its own shard's image
    located = locate_rows(out, {(shards[1], "x", 1)})
    assert list(located) == [(shards[1], "x", 1)] and shard_id(shards[1]) in located[(shards[1], "x", 1)].part


def test_one_shard_spelled_four_ways_is_one_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_shard(tmp_path / "a" / "b.tar", [_sample("k", 1)])
    monkeypatch.chdir(tmp_path)
    spellings = ["a//b.tar", "a/./b.tar", "a/x/../b.tar", "file://a/b.tar"]
    assert expand_shards(spellings) == ["a/b.tar"]
    absolute = [f"{tmp_path}/a//b.tar", f"file://{tmp_path}/a/./b.tar", f"{tmp_path}/a/x/../b.tar"]
    assert expand_shards(absolute) == [f"{tmp_path}/a/b.tar"]
    # Object keys are literal: two spellings there are two objects.
    assert expand_shards(["s3://bk/a//b.tar", "s3://bk/a/b.tar"]) == ["s3://bk/a//b.tar", "s3://bk/a/b.tar"]


@pytest.mark.parametrize("mode", ["top1", "topk"])
def test_prediction_modes_never_parse_labels(tmp_path: Path, tiny_model, mode: str) -> None:
    shard = write_shard(tmp_path / "s.tar", [_sample("good", 1, cls=2), _sample("odd", 2, cls=b"not a class")])
    cfg = tiny_config(shard, str(tmp_path / "out"), "method.name=center", f"targets.mode={mode}", "targets.k=2")
    process_shard(shard, cfg, tiny_model)
    table = read_results(cfg.output.uri)
    assert table.column("error").null_count == table.num_rows  # the unparseable .cls is not read
    assert set(table.column("key").to_pylist()) == {"good", "odd"}
    label = tiny_config(shard, str(tmp_path / "out2"), "method.name=center", "targets.mode=label")
    process_shard(shard, label, tiny_model)
    errors = dict(zip(*(read_results(label.output.uri).column(c).to_pylist() for c in ("key", "error"))))
    assert errors["good"] is None and "not an integer class index" in errors["odd"]


def _user_folder(root: Path) -> Path:
    (root / "parts").mkdir(parents=True)
    (root / "parts" / "notes.txt").write_text("mine")
    (root / "config.yaml").write_text("my: settings\n")
    return root


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_ours_is_refused_and_left_alone(tmp_path: Path, overwrite: bool) -> None:
    out = _user_folder(tmp_path / "mine")
    with pytest.raises(OutputConflictError, match=r"is not empty \(config.yaml, parts\).*nothing there is deleted") as err:
        check_output(str(out), "a" * 64, overwrite, Storage())
    assert "\n" not in str(err.value)
    assert (out / "parts" / "notes.txt").read_text() == "mine" and (out / "config.yaml").read_text() == "my: settings\n"
    assert not (out / "config.json").exists()
    (out / "config.json").write_text('{"name": "my project"}')  # someone else's config.json
    with pytest.raises(OutputConflictError, match="config.json that is not this project's"):
        check_output(str(out), "a" * 64, overwrite, Storage())
    assert json.loads((out / "config.json").read_text()) == {"name": "my project"}


def test_overwrite_deletes_only_what_a_run_wrote(tmp_path: Path) -> None:
    out = tmp_path / "out"
    check_output(str(out), "a" * 64, False, Storage())
    assert json.loads((out / "config.json").read_text())["written_by"]
    rows = [{"shard": "/d/s.tar", "key": "k", "model": "m", "method": "center", "target": 0, "error": None}]
    commit_part(str(out), "/d/s.tar", rows_to_table(rows, "tensor", None), {"config_hash": "a" * 64}, Storage())
    (out / "parts" / "notes.txt").write_text("mine")
    check_output(str(out), "b" * 64, True, Storage())
    assert load_done(str(out)) == {} and not list(out.rglob("*.parquet"))
    assert (out / "parts" / "notes.txt").read_text() == "mine"


def test_a_factorys_weights_are_in_the_hash_and_checked_by_each_worker(tmp_path: Path) -> None:
    cfg = tiny_config("unused.tar", str(tmp_path / "out"), "method.name=center")
    loaded = load_model(cfg.model)
    assert loaded.weights_digest.startswith("state:")
    assert load_model(cfg.model).weights_digest == loaded.weights_digest  # seeded: every process agrees
    other = tiny_config("unused.tar", str(tmp_path / "out"), "method.name=center",
                        "model.factory=demo.model:build_demo_model")  # unseeded: new weights each time
    assert load_model(other.model).weights_digest != load_model(other.model).weights_digest
    assert config_hash(cfg, loaded.weights_digest) != config_hash(cfg, load_model(other.model).weights_digest)
    job = LeaseToken(cfg.output.uri, 1, "run", config_hash(other, load_model(other.model).weights_digest))
    with pytest.raises(RuntimeError, match="this worker's model is not the driver's"):
        ShardWorker(other, lease=job)
