"""eMPRT and sMPRT at scale (``pipeline.metrics.mprt``): the tasks the sanity check runs through the
driver, each committing parts per shard with done-markers, so retries and resume apply.

- ``SmoothedAttributionTask``: the attribution task (original or randomized model) with each
  explanation averaged over N noisy copies of the input (``SmoothedExplainer``): sMPRT's denoised
  maps, N times the method's calls.
- ``MPRTTask``: per shard, reads the rows of the original output and of the fully randomized
  model's (and, with sMPRT, of both denoised outputs) for that shard, runs both models once on the
  shard's images for their output entropies, and writes one row per (key, target)
  (``MPRT_SCHEMA``). Memory: one shard's rows.

Maps are the rows' M stored maps summed (as the pointing game and the similarity take them),
restored from their uint8 storage: the histogram entropy is that of the stored maps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from extremal_core.methods import Explainer, Explanation
from extremal_core.rewards import class_scores
from pipeline.commit import part_uri
from pipeline.config import JobConfig
from pipeline.evaluation.randomization import RandomizedAttributionTask, randomize
from pipeline.io.parts import iter_part_rows
from pipeline.metrics.mprt import (
    BINS,
    SMOOTH_MAGNITUDE,
    discrete_entropy,
    emprt_scores,
    noisy_copies,
    output_entropy,
    smprt_similarity,
)
from pipeline.models import load_model
from pipeline.readahead import Item
from pipeline.schema import restore_maps
from pipeline.shard_task import ShardContext, ShardTask
from pipeline.storage import Storage, redact_url

_F32 = pa.float32()
EMPRT_COLUMNS = ("emprt", "explanation_rise", "model_rise", "emprt_vs_model")
MPRT_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("method", pa.string()), ("model", pa.string()), ("target", pa.int32()),
    ("explanation_entropy", _F32), ("explanation_entropy_random", _F32),
    ("output_entropy", _F32), ("output_entropy_random", _F32),
    *[(c, _F32) for c in EMPRT_COLUMNS],
    ("smprt", _F32),  # null without sMPRT
    ("error", pa.string()),
])
_READ = ["key", "method", "target", "maps", "map_min", "map_max", "map_height", "map_width", "error"]


class SmoothedExplainer:
    """An explainer whose maps ``[B, M, H, W]`` are the mean over ``samples`` noisy copies of the
    images (``noisy_copies``, the last one clean; noise drawn from ``seed`` at each call), its
    other values the clean copy's. Attributes it lacks are the wrapped explainer's."""

    def __init__(self, explainer: Explainer, samples: int, magnitude: float = SMOOTH_MAGNITUDE, seed: int = 0) -> None:
        self.explainer, self.samples, self.magnitude, self.seed = explainer, samples, magnitude, seed

    def __getattr__(self, name: str) -> Any:
        if name == "explainer":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.explainer, name)

    def explain(self, images: torch.Tensor, targets: Any) -> Explanation:
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        total, e = None, None
        for x in noisy_copies(images, self.samples, self.magnitude, generator):
            e = self.explainer.explain(x, targets)
            maps = e.maps.detach().float()
            total = maps if total is None else total + maps
        return Explanation(total / self.samples, e.labels, e.values)


class SmoothedAttributionTask(RandomizedAttributionTask):
    """The attribution task with ``layers`` re-initialised (none: the trained model) and the
    explainer smoothed (``SmoothedExplainer``); built as ``functools.partial(..., layers=...,
    samples=..., magnitude=..., seed=..., evaluation=...)``."""

    def __init__(self, cfg: JobConfig, device: torch.device, layers: Sequence[str], samples: int,
                 magnitude: float = SMOOTH_MAGNITUDE, seed: int = 0, evaluation: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg, device, layers, seed, evaluation)
        self.explainer = SmoothedExplainer(self.explainer, samples, magnitude, seed)


@dataclass(frozen=True)
class MPRTSettings:
    """Where the outputs are: ``original_uri`` (the job's), ``random_uri`` (the fully randomized
    model's: ``layers`` re-initialised with ``seed``), and with sMPRT (``samples`` > 0) the two
    denoised outputs; ``bins`` of the explanation's histogram."""

    original_uri: str
    random_uri: str
    layers: tuple[str, ...]
    seed: int = 0
    smooth_original_uri: str | None = None
    smooth_random_uri: str | None = None
    samples: int = 0
    magnitude: float = SMOOTH_MAGNITUDE
    bins: int = BINS

    def hashed(self) -> dict[str, Any]:
        """What changes the rows (the outputs' locations do not)."""
        return {"evaluation": "mprt", "layers": list(self.layers), "seed": self.seed, "samples": self.samples,
                "magnitude": self.magnitude, "bins": self.bins}


def _by_row(uri: str, shard_url: str, storage: Storage) -> dict[tuple[str, int], dict[str, Any]]:
    """(key, target) -> the good rows of the shard's part under ``uri`` (empty when it has none)."""
    try:
        return {(r["key"], r["target"]): r for r in iter_part_rows(part_uri(uri, shard_url), storage, _READ)
                if r["error"] is None}
    except FileNotFoundError:
        return {}


def _summed(row: dict[str, Any]) -> torch.Tensor:
    return torch.from_numpy(restore_maps(row["stored"], row["map_min"], row["map_max"]).sum(axis=0))  # [h, w]


class MPRTTask(ShardTask):
    """eMPRT (and sMPRT) of one shard's rows: the trained model and the fully randomized one on
    ``device``. Built as ``functools.partial(MPRTTask, settings=...)``."""

    def __init__(self, cfg: JobConfig, device: torch.device, settings: MPRTSettings) -> None:
        random = load_model(cfg.model, "cpu").model  # CPU first: the stage's seeded weights
        self.random = randomize(random, settings.layers, settings.seed).to(device)
        self.setup(cfg, device, load_model(cfg.model, device), settings.hashed())
        self.settings = settings

    def _output_entropies(self, items: Iterator[Item]) -> tuple[dict[str, tuple[float, float]], int]:
        """key -> (trained, randomized) output entropy for the shard's good images; images read."""
        out: dict[str, tuple[float, float]] = {}
        images, batch = 0, []

        def flush() -> None:
            by_shape: dict[tuple[int, ...], list[Item]] = {}
            for it in batch:
                by_shape.setdefault(tuple(it.x.shape), []).append(it)
            for group in by_shape.values():
                x = torch.stack([it.x for it in group]).to(self.device)
                with torch.no_grad():
                    h = output_entropy(class_scores(self.loaded.model(x))).tolist()
                    hr = output_entropy(class_scores(self.random(x))).tolist()
                out.update({it.key: (a, b) for it, a, b in zip(group, h, hr)})
            batch.clear()

        for item in items:
            images += 1
            if item.error is None:
                batch.append(item)
                if len(batch) >= self.cfg.worker.batch_size:
                    flush()
        flush()
        return out, images

    def compute(self, shard_url: str, items: Iterator[Item], ctx: ShardContext) -> tuple[pa.Table, int]:
        """``MPRT_SCHEMA`` rows for the original part's rows. Raises FileNotFoundError when the
        shard has no part in the job's output."""
        s, storage = self.settings, ctx.storage
        entropies, images = self._output_entropies(items)
        random = _by_row(s.random_uri, shard_url, storage)
        smooth = (_by_row(s.smooth_original_uri, shard_url, storage), _by_row(s.smooth_random_uri, shard_url, storage)) \
            if s.samples > 0 and s.smooth_original_uri and s.smooth_random_uri else None
        base = {"shard": redact_url(shard_url), "model": self.loaded.name}
        out: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []  # (out row, original, randomized)
        for row in iter_part_rows(part_uri(s.original_uri, shard_url), storage, _READ):
            res = {**base, "key": row["key"], "method": row.get("method"), "target": row["target"], "error": None}
            out.append(res)
            other = random.get((row["key"], row["target"]))
            if row["error"] is not None:
                res["error"] = f"attribution: {row['error']}"
            elif other is None:
                res["error"] = "no row of the randomized model for this (key, target)"
            elif row["key"] not in entropies:
                res["error"] = f"key {row['key']!r} not readable in the shard"
            else:
                pending.append((res, row, other))
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, (_, row, other) in enumerate(pending):
            by_shape.setdefault((*row["stored"].shape[1:], *other["stored"].shape[1:]), []).append(j)
        for idx in by_shape.values():
            self._score([pending[j] for j in idx], entropies, smooth)
        return pa.Table.from_pylist(out, schema=MPRT_SCHEMA), images

    def _score(self, group: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]],
               entropies: dict[str, tuple[float, float]], smooth: tuple[dict, dict] | None) -> None:
        """Fill one map shape's rows: both explanations' entropies, the outputs', the scores."""
        dev = self.device
        h = discrete_entropy(torch.stack([_summed(r) for _, r, _ in group]).to(dev), self.settings.bins)
        hr = discrete_entropy(torch.stack([_summed(o) for _, _, o in group]).to(dev), self.settings.bins)
        y = torch.tensor([entropies[r["key"]][0] for _, r, _ in group], dtype=torch.float64, device=dev)
        yr = torch.tensor([entropies[r["key"]][1] for _, r, _ in group], dtype=torch.float64, device=dev)
        scores = {k: v.tolist() for k, v in emprt_scores(h, hr, y, yr).items()}
        cols = {"explanation_entropy": h.tolist(), "explanation_entropy_random": hr.tolist(),
                "output_entropy": y.tolist(), "output_entropy_random": yr.tolist(), **scores}
        for k, (res, _, _) in enumerate(group):
            res.update({c: v[k] for c, v in cols.items()})
        if smooth is None:
            return
        pairs = [(k, smooth[0].get((r["key"], r["target"])), smooth[1].get((r["key"], r["target"])))
                 for k, (_, r, _) in enumerate(group)]
        pairs = [(k, a, b) for k, a, b in pairs if a is not None and b is not None]
        if pairs:
            sim = smprt_similarity(torch.stack([_summed(a) for _, a, _ in pairs]).to(dev),
                                   torch.stack([_summed(b) for _, _, b in pairs]).to(dev)).tolist()
            for (k, _, _), v in zip(pairs, sim):
                group[k][0]["smprt"] = v
