"""Everything about a job that can be checked without a cluster, checked before any work starts.

``pipeline.config_load`` checks the config's shape and types; this checks what needs the world:
the shard list expands, the model builds and its weights load (on the CPU of the driver), the
reward exists, the method can be prepared for that model. Each failure is a ``ConfigError`` naming
the key (``jobs.attribute`` exits 2 with that one line), raised before Ray starts and before
anything is written to the output folder, so a corrected re-run is never refused as "another
config". The weights' content hash (``LoadedModel.weights_digest``) goes into the config hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from extremal_core.rewards import get_reward
from pipeline.config import ConfigError, JobConfig
from pipeline.config_hash import config_hash
from pipeline.method import build_explainer
from pipeline.models import load_model
from pipeline.storage import Storage
from pipeline.tables import expand_units


@dataclass(frozen=True)
class Checked:
    """A job that passed preflight: its shard URLs, the weights' digest and the full config hash."""

    shards: tuple[str, ...]
    weights_digest: str | None
    config_hash: str


def _model_key(message: str) -> str:
    """Which ``model.*`` key a model-loading message is about."""
    text = message.lower()
    for word, key in (
        ("checkpoint", "model.checkpoint"),
        ("factory", "model.factory"),
        ("pretrained weights", "model.weights"),
        ("unknown weights", "model.weights"),
        ("architecture", "model.arch"),
        ("num_classes", "model.num_classes"),
        ("mean and std", "model.preprocessing"),
        ("interpolation", "model.preprocessing.interpolation"),
    ):
        if word in text:
            return key
    return "model"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def preflight(cfg: JobConfig) -> Checked:
    """Check ``cfg`` against the world; raises ConfigError (one line, naming the key)."""
    try:
        shards = expand_units(cfg.input, Storage.from_config(cfg))
    except ValueError as exc:
        raise ConfigError(f"input.shards: {_one_line(exc)}") from None
    try:
        loaded = load_model(cfg.model, "cpu")
    except ValueError as exc:
        raise ConfigError(f"{_model_key(str(exc))}: {_one_line(exc)}") from None
    digest = loaded.weights_digest
    if cfg.method.uses_engine_settings:
        try:
            get_reward(cfg.extremal.optim.reward)
        except ValueError as exc:
            raise ConfigError(f"extremal.reward: {_one_line(exc)}") from None
    try:
        build_explainer(cfg, loaded.model)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        text = _one_line(exc)
        named = [p for p in cfg.method.params if p in text]
        raise ConfigError(f"method.{named[0] if named else 'name'}: {text}") from None
    finally:
        del loaded
        if torch.cuda.is_available():  # pragma: no cover - the driver normally has no GPU
            torch.cuda.empty_cache()
    return Checked(tuple(shards), digest, config_hash(cfg, digest))
