"""The attribution task and the worker, without Ray: real tar shards in, a real committed Parquet
part out; the worker is generic over tasks."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.commit import done_uri, part_uri
from pipeline.io.parts import maps_at_original_size, read_results
from pipeline.readahead import Prefetcher
from pipeline.shards import ShardReadError
from pipeline.targets import pick_targets
from pipeline.tasks import AttributionTask, process_shard
from pipeline.worker import ShardWorker
from tests.pipeline.conftest import tiny_config
from tests.shard_factory import image_samples, member_offsets, truncate_file, write_shard


def _mixed_shard(path: Path) -> tuple[str, list[str]]:
    """A shard with 4 good samples, a corrupt image, a sample without an image and one whose
    label is outside the model's 4 classes. Returns (path, keys in order)."""
    good = image_samples(0, 4)
    bad = [
        {"__key__": "corrupt", "jpg": b"\xff\xd8\xff\xe0 definitely not a jpeg", "cls": 1},
        {"__key__": "no_image", "cls": 2, "json": {"label": 2}},
        {**image_samples(1, 1)[0], "__key__": "label_out_of_range", "cls": 9},
    ]
    samples = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]
    return write_shard(path, samples), [s["__key__"] for s in samples]


def test_process_shard_rows_match_input_and_bad_samples_are_error_rows(tmp_path: Path, tiny_model) -> None:
    shard, keys = _mixed_shard(tmp_path / "mixed-000000.tar")
    out = str(tmp_path / "out")
    cfg = tiny_config(shard, out, "worker.batch_size=3")  # batches span the bad samples
    marker = process_shard(shard, cfg, tiny_model)

    assert marker["rows"] == 7 and marker["errors"] == 3 and marker["images"] == 7
    assert Path(done_uri(out, shard)).exists()
    table = pq.read_table(part_uri(out, shard))  # plain pyarrow, no project code
    df = table.to_pandas()
    assert df["key"].tolist() == keys  # one row per (image, target), in shard order
    errors = dict(zip(df["key"], df["error"]))
    assert "cannot decode image" in errors["corrupt"]
    assert "no image" in errors["no_image"]
    assert "out of range" in errors["label_out_of_range"]
    good = df[df["error"].isna()]
    assert (good["target_source"] == "label").all() and good["target"].tolist() == [0, 1, 2, 3]
    assert (good["width"] == 48).all() and (good["height"] == 40).all()
    assert (good["map_height"] == 32).all() and good["crop_left"].tolist() == [8] * 4
    assert (df["method"] == "extremal").all() and good["optimal_area_reached"].notna().all()
    assert good["preserved"].map(len).tolist() == [2] * 4 and good["layer"].isna().all()

    first = table.filter(table["error"].is_null()).slice(0, 1)
    tensor = first.column("maps").combine_chunks().to_numpy_ndarray()
    assert tensor.shape == (1, 2, 32, 32) and tensor.dtype == np.uint8
    # Mapping back works from a pandas row and from a dict alike.
    back = maps_at_original_size(good.iloc[0])
    assert back.shape == (2, 40, 48) and back.dtype == np.float32 and 0 <= back.min() and back.max() <= 1
    np.testing.assert_allclose(maps_at_original_size(first.to_pylist()[0]), back)
    assert read_results(out).num_rows == 7


def test_topk_targets_give_one_row_per_target(tmp_path: Path, tiny_model) -> None:
    shard = write_shard(tmp_path / "k-000000.tar", image_samples(0, 2))
    cfg = tiny_config(shard, str(tmp_path / "out"), "targets.mode=topk", "targets.k=2")
    process_shard(shard, cfg, tiny_model)
    df = read_results(str(tmp_path / "out")).to_pandas()
    assert df["key"].tolist() == ["s000_0000", "s000_0000", "s000_0001", "s000_0001"]
    assert (df["target_source"] == "topk").all() and df["error"].isna().all()
    for _, rows in df.groupby("key"):
        assert rows["target"].nunique() == 2


def test_pick_targets_modes() -> None:
    scores = torch.tensor([[0.1, 3.0, 2.0], [5.0, 0.0, 1.0]])
    assert [[t.target for t in ts] for ts in pick_targets(scores, [None, None], "top1")] == [[1], [0]]
    assert [[t.target for t in ts] for ts in pick_targets(scores, [None, None], "topk", 5)] == [[1, 2, 0], [0, 2, 1]]
    label = pick_targets(scores, [2, None], "label")
    assert label[0][0].target == 2 and label[0][0].error is None
    assert "no label" in label[1][0].error


def test_truncated_shard_raises_and_commits_nothing(tmp_path: Path, tiny_model) -> None:
    shard = write_shard(tmp_path / "cut-000000.tar", image_samples(0, 3))
    offsets = member_offsets(shard)
    truncate_file(shard, offsets["s000_0002.jpg"][1] + 10)  # in the middle of the last image
    out = str(tmp_path / "out")
    with pytest.raises(ShardReadError, match="cut-000000.tar"):
        process_shard(shard, tiny_config(shard, out), tiny_model)
    assert not Path(part_uri(out, shard)).exists() and not Path(done_uri(out, shard)).exists()


def test_prefetcher_reads_ahead_reraises_in_order_and_stops_early() -> None:
    def source():
        yield 1
        yield 2
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"), Prefetcher(source(), maxsize=1) as items:
        for x in items:
            got.append(x)
    assert got == [1, 2]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    p = Prefetcher(endless(), maxsize=2)
    assert next(iter(p)) == 0
    time.sleep(0.2)
    assert len(produced) <= 4  # bounded: a few items ahead, not the whole stream
    p.close()
    assert not any(t.name == "shard-prefetch" and t.is_alive() for t in threading.enumerate() if t is p._thread)


@pytest.mark.parametrize(
    ("overrides", "maps", "extremal_columns"),
    [
        (("method.name=center",), 1, False),
        (("method.name=extremal_channels", "method.layer=features.3"), 2, True),
    ],
    ids=["center", "extremal_channels"],
)
def test_every_method_writes_the_same_contract(tmp_path: Path, tiny_model, overrides, maps, extremal_columns) -> None:
    shard = write_shard(tmp_path / "m-000000.tar", image_samples(0, 2))
    out = str(tmp_path / "out")
    cfg = tiny_config(shard, out, *overrides)
    process_shard(shard, cfg, tiny_model)
    table = pq.read_table(part_uri(out, shard))
    assert table.schema.field("maps").type.shape == [maps, 32, 32]
    df = table.to_pandas()
    assert (df["method"] == cfg.method.name).all() and df["error"].isna().all()
    assert df["scores"].isna().all() and df["optimal_area"].isna().all()
    assert df["areas"].notna().all() == extremal_columns
    assert (df["map_max"] >= df["map_min"]).all()
    back = maps_at_original_size(df.iloc[0])
    assert back.shape == (maps, 40, 48)


def test_shard_worker_in_process(tmp_path: Path) -> None:
    """The actor class is a plain class: it loads the model once and processes shards."""
    shard = write_shard(tmp_path / "w-000000.tar", image_samples(0, 2))
    cfg = tiny_config(shard, str(tmp_path / "out"))
    worker = ShardWorker(cfg)
    assert worker.ready()["device"] == "cpu"
    marker = worker.process(shard, attempt=3)
    assert marker["attempts"] == 3 and marker["rows"] == 2
    explainer = worker.task.explainer
    worker.process(shard)
    assert worker.task.explainer is explainer  # built once per actor, not per shard or batch
    saved = json.loads(Path(done_uri(cfg.output.uri, shard)).read_text())
    assert saved["config_hash"] == marker["config_hash"]


class _TimedTask(AttributionTask):
    """The attribution task, recording when each shard's compute starts and ends."""

    def __init__(self, cfg, device) -> None:
        super().__init__(cfg, device)
        self.spans: list[tuple[float, float]] = []

    def compute(self, shard_url, items, ctx):
        start = time.perf_counter()
        try:
            return super().compute(shard_url, items, ctx)
        finally:
            self.spans.append((start, time.perf_counter()))


def test_concurrent_calls_read_ahead_but_compute_one_at_a_time(tmp_path: Path) -> None:
    """What an actor with 2 shards in flight does: both calls run, and their computes never overlap."""
    shards = [write_shard(tmp_path / f"c-{i:06d}.tar", image_samples(i, 2)) for i in range(2)]
    cfg = tiny_config(shards, str(tmp_path / "out"))
    worker = ShardWorker(cfg, task_class=_TimedTask)
    markers: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda s=s: markers.update({s: worker.process(s)})) for s in shards]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(markers) == sorted(shards)
    assert all(m["rows"] == 2 and m["errors"] == 0 for m in markers.values())
    (a0, a1), (b0, b1) = sorted(worker.task.spans)
    assert a1 <= b0, worker.task.spans  # the second shard computed only after the first finished
    assert sorted(read_results(cfg.output.uri).column("key").to_pylist()) == ["s000_0000", "s000_0001", "s001_0000", "s001_0001"]


class _EchoTask:
    """A task that commits nothing: records what the worker hands it."""

    def __init__(self, cfg, device) -> None:
        self.name, self.device, self.calls = "echo", device, []

    def run(self, shard_url, ctx):
        assert isinstance(ctx.lock, type(threading.Lock()))
        self.calls.append(shard_url)
        return {"shard": shard_url, "attempts": ctx.attempt, "rows": 0, "errors": 0, **ctx.stats}


def test_worker_is_generic_over_tasks(tmp_path: Path) -> None:
    """The worker builds its task once as task_class(cfg, device) and hands it one shard per call."""
    cfg = tiny_config("a.tar", str(tmp_path / "out"))
    worker = ShardWorker(cfg, task_class=_EchoTask)
    assert worker.ready()["model"] == "echo" and worker.task.device == torch.device("cpu")
    assert worker.process("a.tar", attempt=2)["attempts"] == 2
    worker.process("b.tar")
    assert worker.task.calls == ["a.tar", "b.tar"]


class _OomAbove:
    """The job's real explainer, with a CUDA out-of-memory error injected (on the CPU) for any
    call of more than ``limit`` rows; records the batch sizes it was called with."""

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit, self.sizes = inner, limit, []

    def explain(self, images, targets):
        self.sizes.append(images.shape[0])
        if images.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.inner.explain(images, targets)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_cuda_out_of_memory_halves_the_micro_batch_instead_of_failing_the_shard(tmp_path: Path, tiny_model) -> None:
    from pipeline.method import build_explainer

    shard = write_shard(tmp_path / "oom-000000.tar", image_samples(0, 5))
    cfg = tiny_config(shard, str(tmp_path / "out"), "method.name=center", "worker.batch_size=4")
    explainer = _OomAbove(build_explainer(cfg, tiny_model.model), limit=1)
    marker = process_shard(shard, cfg, tiny_model, explainer=explainer)
    assert marker["rows"] == 5 and marker["errors"] == 0
    assert explainer.sizes == [4, 2, 1, 1, 1, 1, 1]  # 4 fails, 2 fails, then one row at a time
    never = _OomAbove(build_explainer(cfg, tiny_model.model), limit=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # one row does not fit: the shard fails (and is retried)
        process_shard(shard, cfg, tiny_model, explainer=never)
