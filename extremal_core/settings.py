"""Every number of the algorithm in one validated dataclass (docs/algorithm.md, "Defaults")."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
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
FAST_SCHEDULE_FACTOR = 3  # schedule="fast": max_iter // 3 iterations


@dataclass(frozen=True)
class ExtremalSettings:
    """Settings of one extremal-perturbation run.

    The defaults are the paper's (and TorchRay's): areas are fractions of the image in (0, 1).
    `max_masks_per_batch` bounds how many masks (images x areas, x2 for `dual`) go through the
    network at once; `memory_budget_mb` (CUDA only) derives that bound from a measured probe.
    `fuse_batchnorm` folds eval-mode BatchNorm into the preceding convolutions of a traced copy
    of the model (same logits to float rounding, ~20 % less network time); `pool_before_relu`
    runs a ReLU after the max-pool it feeds (the same values exactly, a quarter of the ReLU's
    work); `channels_last` runs that copy and its inputs in NHWC (see `network.py`).
    `native_cpu_kernels` runs the smooth max and the pyramid blend of float32 CPU masks in
    compiled C (`cpu_kernels.py`; same values to float rounding, 2-4x faster) when a C compiler
    is present. `tie_tolerance`: mask values this close
    to the area threshold count as tied and share the reference's mean (`area.py`), which makes
    the masks the same on every machine. `schedule="fast"`: the same λ range (from `lambda0` to
    `lambda0·lambda_growth^max_iter`, the same final sharpness) in `max_iter // 3` iterations,
    λ growing `lambda_growth^(max_iter / (max_iter // 3))` per iteration, the same learning rate:
    3x fewer network passes; measured against the paper schedule in
    `benchmarks/bench_schedule.py` (extremal perturbation only). `stop_tolerance` (None: off, the paper's fixed
    schedule): every `stop_window` iterations, a mask whose parameters moved less than this
    (largest absolute change over the window) is frozen and leaves the network batch
    (`stop_finish="freeze"`: it keeps its mask; `"area"`: it goes on with the area term alone;
    `optimize.py`; measured in `benchmarks/bench_schedule.py`). `warm_start` (None: off, every
    area from the all-ones start at once): the areas one after another, smallest first (`"up"`)
    or largest first (`"down"`); the first runs the whole schedule, each next one starts from the
    previous area's final parameters for `warm_iter` iterations: the schedule's last ones (the
    largest λ, `warm_lambda="tail"`) or its whole λ range compressed (`"range"`); measured in
    `benchmarks/bench_schedule.py`. `compile`: `"auto"` (on for CUDA, off elsewhere), `"on"` or
    `"off"`: the iteration's forward through `torch.compile` (one graph per micro-batch shape,
    `fullgraph`, per explainer: its network copy is what a graph is specialised to; the smooth max
    by the fused map of `fused_masks.py`; same masks to float
    rounding), falling back to the eager code with a one-line warning when compilation fails.
    `tf32` (None: torch's flags as they are): TF32 matmuls and convolutions on CUDA, set
    explicitly; `cudnn.benchmark` is turned on for CUDA runs.
    """

    areas: tuple[float, ...] = (0.1,)
    variant: str = "preserve"
    reward: str = "simple"
    perturbation: str = "blur"
    schedule: str = "paper"
    max_iter: int = 800
    num_levels: int = 8
    max_blur: float = 20.0
    step: int = 7
    sigma: float = 21.0
    smooth_max_coldness: float = 20.0
    learning_rate: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.9
    lambda0: float = 300.0
    lambda_growth: float = 1.0035
    jitter: bool = True
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    keep_history: bool = False
    max_masks_per_batch: int | None = None
    memory_budget_mb: float | None = None
    autocast: str | None = None
    channels_last: bool = True
    fuse_batchnorm: bool = True
    pool_before_relu: bool = True
    native_cpu_kernels: bool = True
    stop_tolerance: float | None = None
    stop_window: int = 20
    stop_finish: str = "freeze"
    warm_start: str | None = None
    warm_iter: int = 100
    warm_lambda: str = "tail"
    compile: str | bool = "auto"  # YAML reads a bare on / off as a boolean: normalised below
    tf32: bool | None = None

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
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(
                f"unknown perturbation {self.perturbation!r}; valid perturbations: {', '.join(PERTURBATIONS)}"
            )
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {AUTOCAST_DTYPES}, got {self.autocast!r}")
        for name in ("max_iter", "num_levels", "step", "stop_window", "warm_iter"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {self.num_levels}")
        for name in ("max_blur", "sigma", "smooth_max_coldness", "learning_rate", "lambda0", "lambda_growth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.tie_tolerance >= 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {self.tie_tolerance!r}")
        if self.stop_tolerance is not None:
            if not self.stop_tolerance >= 0:
                raise ValueError(f"stop_tolerance must be >= 0 or None, got {self.stop_tolerance!r}")
            if self.stop_finish not in STOP_FINISHES:
                raise ValueError(f"stop_finish must be one of {STOP_FINISHES}, got {self.stop_finish!r}")
            if self.keep_history:
                raise ValueError("keep_history needs every mask at every iteration: not with stop_tolerance")
        if isinstance(self.compile, bool):  # YAML reads a bare on / off as a boolean
            object.__setattr__(self, "compile", "on" if self.compile else "off")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {self.warm_start!r}")
        if self.warm_lambda not in WARM_LAMBDAS:
            raise ValueError(f"warm_lambda must be one of {WARM_LAMBDAS}, got {self.warm_lambda!r}")
        if self.warm_start is not None and (self.stop_tolerance is not None or self.keep_history):
            raise ValueError("warm_start runs the areas one after another: not with stop_tolerance or keep_history")
        if self.max_masks_per_batch is not None and self.max_masks_per_batch < 1:
            raise ValueError(f"max_masks_per_batch must be >= 1, got {self.max_masks_per_batch}")

    def scheduled(self) -> ExtremalSettings:
        """The settings the optimizer runs: `schedule="fast"` resolved into `max_iter` and
        `lambda_growth` (3x fewer iterations over the same λ range), "paper" as they are."""
        if self.schedule == "paper":
            return self
        iters = max(1, self.max_iter // FAST_SCHEDULE_FACTOR)
        return replace(self, schedule="paper", max_iter=iters, lambda_growth=self.lambda_growth ** (self.max_iter / iters))

    def compiles(self, device: torch.device) -> bool:
        """Whether the iteration runs through `torch.compile` on `device` (`compile`)."""
        return self.compile == "on" or (self.compile == "auto" and device.type == "cuda")

    def with_overrides(self, **overrides: Any) -> ExtremalSettings:
        """A copy with some fields changed; unknown names raise a TypeError listing the valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; valid settings: {', '.join(sorted(valid))}")
        return replace(self, **overrides)
