"""Model parameter randomization for the sanity checks (docs/evaluations.md, "Sanity checks"; Adebayo et al. 2018):
which layers are learnable, the stages of cascading (top layer first, one more each stage) and
independent (one layer at a time) randomization, re-initialising a layer in place, and the
attribution task that explains with the randomized model.

A layer is re-initialised by its own module's ``reset_parameters()`` (BatchNorm's affine
parameters too), from ``torch.manual_seed(seed)`` on the CPU before the model goes to its device,
so every worker of a stage gets the same weights; buffers (BatchNorm running statistics) are
kept, as in the original code. Layers are reset top-down in one seeded stream, so a cascading
stage keeps the weights the stage before it drew for the layers they share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.config import JobConfig
from pipeline.method import build_explainer
from pipeline.models import load_model
from pipeline.tasks import AttributionTask

MODES = ("cascading", "independent")


def learnable_layers(model: nn.Module) -> list[str]:
    """Names of the modules holding parameters of their own and a ``reset_parameters()``, in
    definition order (input to output)."""
    return [
        name for name, m in model.named_modules()
        if name and any(True for _ in m.parameters(recurse=False)) and callable(getattr(m, "reset_parameters", None))
    ]


def randomize(model: nn.Module, layers: Sequence[str], seed: int = 0) -> nn.Module:
    """Re-initialise ``layers`` (names, in this order) of ``model`` in place, keeping buffers;
    the global RNG is left as it was. Returns ``model``."""
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules or not callable(getattr(modules[n], "reset_parameters", None))]
    if unknown:
        raise ValueError(f"no learnable layer named {', '.join(unknown)}; the model's: {', '.join(learnable_layers(model))}")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name in layers:
            m = modules[name]
            kept = {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)}
            m.reset_parameters()  # BatchNorm's also resets its running statistics: put them back
            for k, b in kept.items():
                getattr(m, k).copy_(b)
    return model


@dataclass(frozen=True)
class Stage:
    """One randomized model: ``mode``, ``index`` (0 = the top layer), ``layer`` (the layer this
    stage adds, or the only one), ``randomized`` (every layer re-initialised, top first)."""

    mode: str
    index: int
    layer: str
    randomized: tuple[str, ...]

    @property
    def folder(self) -> str:
        return f"{self.mode}/{self.index:03d}-{self.layer}"


def stages(layers_top_down: Sequence[str], modes: Sequence[str] = MODES) -> list[Stage]:
    """The stages of each mode over ``layers_top_down`` (top layer first)."""
    out = []
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown randomization {mode!r}; valid: {', '.join(MODES)}")
        for i, layer in enumerate(layers_top_down):
            chosen = tuple(layers_top_down[: i + 1]) if mode == "cascading" else (layer,)
            out.append(Stage(mode, i, layer, chosen))
    return out


class RandomizedAttributionTask(AttributionTask):
    """The attribution task with ``layers`` of the job's model re-initialised (``randomize``);
    built as ``functools.partial(RandomizedAttributionTask, layers=..., seed=..., evaluation=...)``
    (``evaluation``: the stage's settings given to ``run_job``). Rows name the model
    ``<name>+random(<n> layers)`` (``<name>`` with no layer)."""

    def __init__(self, cfg: JobConfig, device: torch.device, layers: Sequence[str], seed: int = 0,
                 evaluation: Mapping[str, Any] | None = None) -> None:
        loaded = load_model(cfg.model, "cpu")  # CPU: the same seeded weights on every worker
        randomize(loaded.model, layers, seed)
        name = f"{loaded.name}+random({len(layers)} layers)" if layers else loaded.name
        # The done-markers name the hash that guards the stage's folder (config + stage), not the job's.
        self.setup(cfg, device, dataclasses.replace(loaded, model=loaded.model.to(device), name=name), evaluation)
        self.explainer = build_explainer(cfg, self.loaded.model)
