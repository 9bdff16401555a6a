"""The config hash: which settings change the output rows, and so which runs may share (resume)
one output folder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pipeline.config import JobConfig
from pipeline.config_load import config_to_dict

# Fields that do not change any output row: a run that differs only in these may resume another's
# output. Shards are excluded so a job can be extended with more shards. Which engine settings
# change the rows, each engine setting declares itself (`ExtremalSettings.result_settings`).
_HASH_EXCLUDED: tuple[str, ...] = (
    "input.shards",
    "worker",
    "output.uri",
    "output.overwrite",
    "output.lease_ttl_s",
    "cluster",
    "storage",
    "model.download_weights",
)


def _hashed_dict(cfg: JobConfig) -> dict[str, Any]:
    data = config_to_dict(cfg)
    if not cfg.method.uses_engine_settings:
        data.pop("extremal")  # settings the method never reads do not change its rows
    else:  # the engine settings declare which of them change the masks (extremal_core/settings.py)
        data["extremal"] = cfg.extremal.result_settings()
    for dotted in _HASH_EXCLUDED:
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return data


def config_hash(
    cfg: JobConfig, weights_digest: str | None = None, evaluation: Mapping[str, Any] | None = None
) -> str:
    """sha256 hex of the canonical JSON of the fields that change the output rows: the method and
    its parameters included; not the cluster, storage or output location, batching knobs, or
    the list of shards. ``weights_digest``: what the model's weights are
    (``pipeline.models.LoadedModel.weights_digest``: the checkpoint's content hash, the
    torchvision weights file), so new weights behind the same checkpoint path are another config.
    ``evaluation``: the settings of a job that evaluates the config's results (e.g.
    deletion/insertion's step), hashed with it, so such an output resumes only with the same
    settings; None (an attribution job) gives the config's own hash.

    Computed once per config object (a frozen config: the same object, the same hash): a worker
    asks for every shard, and converting a config with a 100,000-entry shard list costs ~50 ms."""
    args = (weights_digest, json.dumps(evaluation, sort_keys=True, default=str))
    last = _LAST.get(id(cfg))
    if last is not None and last[0] is cfg and last[1] == args:
        return last[2]
    data = _hashed_dict(cfg)
    if weights_digest is not None:
        data["weights_digest"] = weights_digest
    if evaluation is not None:
        data["evaluation"] = dict(evaluation)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    _LAST.clear()  # one entry: the process's job config (the object is kept, so its id is not reused)
    _LAST[id(cfg)] = (cfg, args, digest)
    return digest


_LAST: dict[int, tuple[JobConfig, tuple[str | None, str], str]] = {}
