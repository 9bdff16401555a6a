"""Every number of the algorithm, validated, in three groups by concern (docs/algorithm.md,
"Defaults"): what the optimisation does (`Optimisation`), how a mask is drawn and what it
perturbs with (`MaskSettings`), and how the work is run (`Execution`).

Each field says once whether it changes the masks (its `metadata["results"]`): `True` (the
default), `False` (a speed or memory knob: the same masks to float tolerance) or `"unless
default"` (added after outputs were written: a change from its default changes the masks, the
default is what those outputs hold). `ExtremalSettings.result_settings` reads that declaration;
the pipeline hashes it to decide which runs may share one output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from .area import DEFAULT_TIE_TOLERANCE

VARIANTS = ("preserve", "delete", "dual")
PERTURBATIONS = ("blur", "fade")
AUTOCAST_DTYPES = (None, "bfloat16", "float16")
STOP_FINISHES = ("freeze", "area")
WARM_STARTS = (None, "up", "down")
WARM_LAMBDAS = ("tail", "range")
SCHEDULES = ("paper", "fast")
COMPILE_MODES = ("auto", "on", "off")
# schedule="fast": max_iter // 3 iterations, of which the paper's first 15 % as they are (where a
# small mask settles on its region: compressing them sent some masks to another one), then the
# rest of the paper's λ range in the remaining iterations, smoothstep in log λ. Hashed with the
# schedule's name, so outputs of another definition are another config.
FAST_SCHEDULE = {"iterations_divisor": 3, "paper_start": 0.15, "ramp": "smoothstep in log λ"}
UNLESS_DEFAULT = "unless default"


def _speed(default: Any) -> Any:
    """A field that never changes the masks beyond float tolerance (docs/algorithm.md, "Batching")."""
    return field(default=default, metadata={"results": False})


def _added(default: Any) -> Any:
    """A field added after outputs were written: it changes the masks unless at its default."""
    return field(default=default, metadata={"results": UNLESS_DEFAULT})


def geometric_weights(lambda0: float, growth: float, iters: int) -> list[float]:
    """λ0·growth^t for t < iters, multiplied up step by step as the paper's code does."""
    weights = [lambda0]
    for _ in range(iters - 1):
        weights.append(weights[-1] * growth)
    return weights


def _positive_ints(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if not getattr(obj, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(obj, name)!r}")


@dataclass(frozen=True)
class Optimisation:
    """What is optimised and how: areas (fractions of the image in (0, 1)), variant, reward, the
    SGD and λ schedule. The defaults are the paper's (and TorchRay's).

    `tie_tolerance`: mask values this close to the area threshold count as tied and share the
    reference's mean (`area.py`), which makes the masks the same on every machine.
    `schedule="fast"`: the same λ range (from `lambda0` to the paper's last λ, the same final
    sharpness) in `max_iter // 3` iterations, the same learning rate: 3x fewer network passes.
    Its first `0.15·max_iter` iterations are the paper's own; the rest of the range follows in
    the remaining ones, eased in and out (smoothstep in log λ); `lambda_weights()` lists it and
    `benchmarks/bench_fast_schedule.py` measures it against the paper schedule. `stop_tolerance` (None: off, the
    paper's fixed schedule): every `stop_window` iterations, a mask whose parameters moved less
    than this (largest absolute change over the window) is frozen and leaves the network batch
    (`stop_finish="freeze"`: it keeps its mask; `"area"`: it goes on with the area term alone;
    `optimize.py`). `warm_start` (None: off, every area from the all-ones start at once): the
    areas one after another, smallest first (`"up"`) or largest first (`"down"`); the first runs
    the whole schedule, each next one starts from the previous area's final parameters for
    `warm_iter` iterations: the schedule's last ones (the largest λ, `warm_lambda="tail"`) or its
    whole λ range compressed (`"range"`).
    """

    areas: tuple[float, ...] = (0.1,)
    variant: str = "preserve"
    reward: str = "simple"
    schedule: str = _added("paper")
    max_iter: int = 800
    learning_rate: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.9
    lambda0: float = 300.0
    lambda_growth: float = 1.0035
    jitter: bool = True
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    keep_history: bool = False
    stop_tolerance: float | None = _added(None)
    stop_window: int = _added(20)
    stop_finish: str = _added("freeze")
    warm_start: str | None = _added(None)
    warm_iter: int = _added(100)
    warm_lambda: str = _added("tail")

    def __post_init__(self) -> None:
        areas = self.areas
        if isinstance(areas, (int, float)):
            areas = (float(areas),)
        areas = tuple(float(a) for a in areas)
        object.__setattr__(self, "areas", areas)
        if not areas:
            raise ValueError("areas: give at least one area in (0, 1)")
        bad = [a for a in areas if not 0.0 < a < 1.0]
        if bad:
            raise ValueError(f"areas must lie strictly between 0 and 1, got {bad}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; valid variants: {', '.join(VARIANTS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
        _positive_ints(self, "max_iter", "stop_window", "warm_iter")
        _positive(self, "learning_rate", "lambda0", "lambda_growth")
        if not self.tie_tolerance >= 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {self.tie_tolerance!r}")
        if self.stop_tolerance is not None:
            if not self.stop_tolerance >= 0:
                raise ValueError(f"stop_tolerance must be >= 0 or None, got {self.stop_tolerance!r}")
            if self.stop_finish not in STOP_FINISHES:
                raise ValueError(f"stop_finish must be one of {STOP_FINISHES}, got {self.stop_finish!r}")
            if self.keep_history:
                raise ValueError("keep_history needs every mask at every iteration: not with stop_tolerance")
        if self.warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {self.warm_start!r}")
        if self.warm_lambda not in WARM_LAMBDAS:
            raise ValueError(f"warm_lambda must be one of {WARM_LAMBDAS}, got {self.warm_lambda!r}")
        if self.warm_start is not None and (self.stop_tolerance is not None or self.keep_history):
            raise ValueError("warm_start runs the areas one after another: not with stop_tolerance or keep_history")
        if self.schedule != "paper" and (self.stop_tolerance is not None or self.warm_start is not None):
            raise ValueError("stop_tolerance and warm_start change the paper schedule: not with schedule='fast'")

    def lambda_weights(self) -> list[float]:
        """λ, the area term's weight, at each iteration `[T]`: T = `max_iter` for the paper
        schedule (λ0·growth^t, multiplied up as the paper's code does), `max_iter // 3` for the
        fast one (class docstring)."""
        paper = geometric_weights(self.lambda0, self.lambda_growth, self.max_iter)
        if self.schedule == "paper":
            return paper
        iters = max(1, self.max_iter // FAST_SCHEDULE["iterations_divisor"])
        kept = min(round(FAST_SCHEDULE["paper_start"] * self.max_iter), iters - 1)
        start, end, rest = paper[kept], paper[-1], iters - kept
        if rest == 1:
            return paper[:kept] + [end]
        eased = [3 * u * u - 2 * u * u * u for u in (i / (rest - 1) for i in range(rest))]
        return paper[:kept] + [start * (end / start) ** s for s in eased]


@dataclass(frozen=True)
class MaskSettings:
    """How a mask is drawn and what it perturbs with: the smooth mask's grid `step` and kernel
    `sigma` (pixels), the smooth max's coldness, and the perturbation (`"blur"`: a pyramid of
    `num_levels` blurs up to `max_blur`; `"fade"`: towards zero)."""

    perturbation: str = "blur"
    num_levels: int = 8
    max_blur: float = 20.0
    step: int = 7
    sigma: float = 21.0
    smooth_max_coldness: float = 20.0

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(
                f"unknown perturbation {self.perturbation!r}; valid perturbations: {', '.join(PERTURBATIONS)}"
            )
        _positive_ints(self, "num_levels", "step")
        if self.num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {self.num_levels}")
        _positive(self, "max_blur", "sigma", "smooth_max_coldness")


@dataclass(frozen=True)
class Execution:
    """How the work runs: batching, device paths and precision.

    `max_masks_per_batch` bounds how many masks (images x areas, x2 for `dual`) go through the
    network at once; `memory_budget_mb` (CUDA only) derives that bound from a measured probe.
    `autocast` runs the network in a lower precision (other masks: the one field here that
    changes them). `fuse_batchnorm` folds eval-mode BatchNorm into the preceding convolutions of a
    traced copy of the model (same logits to float rounding, ~20 % less network time);
    `pool_before_relu` runs a ReLU after the max-pool it feeds (the same values exactly, a quarter
    of the ReLU's work); `channels_last` runs that copy and its inputs in NHWC (`network.py`).
    `native_cpu_kernels` runs the smooth max and the pyramid blend of float32 CPU masks in
    compiled C (`cpu_kernels.py`; same values to float rounding, 2-4x faster) when a C compiler
    is present. `compile`: `"auto"` (on for CUDA, off elsewhere), `"on"` or `"off"`: the
    iteration's forward through `torch.compile` (one graph per micro-batch shape, `fullgraph`,
    per explainer: its network copy is what a graph is specialised to; the smooth max by the
    fused map of `fused_masks.py`; same masks to float rounding), falling back to the eager code
    with a one-line warning when compilation fails. `tf32` (None: torch's flags as they are):
    TF32 matmuls and convolutions on CUDA, set explicitly; `cudnn.benchmark` is turned on for
    CUDA runs.
    """

    max_masks_per_batch: int | None = _speed(None)
    memory_budget_mb: float | None = _speed(None)
    autocast: str | None = None
    channels_last: bool = _speed(True)
    fuse_batchnorm: bool = _speed(True)
    pool_before_relu: bool = _speed(True)
    native_cpu_kernels: bool = _speed(True)
    compile: str | bool = _speed("auto")  # YAML reads a bare on / off as a boolean: normalised below
    tf32: bool | None = _speed(None)

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {AUTOCAST_DTYPES}, got {self.autocast!r}")
        if isinstance(self.compile, bool):  # YAML reads a bare on / off as a boolean
            object.__setattr__(self, "compile", "on" if self.compile else "off")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.max_masks_per_batch is not None and self.max_masks_per_batch < 1:
            raise ValueError(f"max_masks_per_batch must be >= 1, got {self.max_masks_per_batch}")

    def compiles(self, device: torch.device) -> bool:
        """Whether the iteration runs through `torch.compile` on `device` (`compile`)."""
        return self.compile == "on" or (self.compile == "auto" and device.type == "cuda")


@dataclass(frozen=True)
class ExtremalSettings:
    """Settings of one extremal-perturbation run: `optim`, `masks` and `execution`.

    A setting has one flat name (`max_iter`, `sigma`, `compile`) across the groups: configs and
    keyword overrides use it (`from_flat`, `with_overrides`), the engine reads the group
    (`settings.optim.max_iter`).
    """

    optim: Optimisation = field(default_factory=Optimisation)
    masks: MaskSettings = field(default_factory=MaskSettings)
    execution: Execution = field(default_factory=Execution)

    @staticmethod
    def groups() -> dict[str, type]:
        """Group attribute name -> its dataclass."""
        return {f.name: f.default_factory for f in fields(ExtremalSettings)}  # type: ignore[misc]

    @classmethod
    def group_of(cls) -> dict[str, str]:
        """Flat setting name -> the group it lives in."""
        return {f.name: group for group, tp in cls.groups().items() for f in fields(tp)}

    @classmethod
    def from_flat(cls, **values: Any) -> ExtremalSettings:
        """Settings from flat names (`from_flat(max_iter=100, sigma=10.0)`), the rest at defaults."""
        return cls().with_overrides(**values)

    def flat(self) -> dict[str, Any]:
        """Flat setting name -> value, every group's fields (what a config file holds)."""
        return {f.name: getattr(getattr(self, g), f.name) for g, tp in self.groups().items() for f in fields(tp)}

    def with_overrides(self, **overrides: Any) -> ExtremalSettings:
        """A copy with some fields changed by flat name; unknown names raise a TypeError listing
        the valid ones; a bad value raises the group's ValueError."""
        where = self.group_of()
        unknown = sorted(set(overrides) - set(where))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; valid settings: {', '.join(sorted(where))}")
        changed = {}
        for group in self.groups():
            mine = {k: v for k, v in overrides.items() if where[k] == group}
            if mine:
                changed[group] = replace(getattr(self, group), **mine)
        return replace(self, **changed)

    def result_settings(self) -> dict[str, Any]:
        """The settings that change the masks, flat name -> value, as each field declares
        (module docstring): what the pipeline's output hash covers."""
        out = {}
        for group, tp in self.groups().items():
            for f in fields(tp):
                results, value = f.metadata.get("results", True), getattr(getattr(self, group), f.name)
                if results is True or (results == UNLESS_DEFAULT and value != f.default):
                    out[f.name] = value
        if self.optim.schedule == "fast":
            out["schedule"] = {"fast": FAST_SCHEDULE}
        return out

