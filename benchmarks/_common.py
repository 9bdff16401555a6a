"""Shared pieces of the benchmarks: models, images, timed runs of both engines, per-stage timing.

TorchRay (`torchray.attribution.extremal_perturbation`) is only *called* here, as the reference.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from extremal_core import extremal_perturbation  # noqa: E402
from extremal_core.area import area_loss, area_plan  # noqa: E402
from extremal_core.masks import SmoothMaskGenerator  # noqa: E402
from extremal_core.network import engine_model  # noqa: E402
from extremal_core.optimize import model_scores  # noqa: E402
from extremal_core.perturbation import build_pyramid, perturb  # noqa: E402
from extremal_core.settings import ExtremalSettings  # noqa: E402
from tests.reproducibility import mask_noise  # noqa: E402,F401  (the benchmarks' and the tests' one noise model)

# --------------------------------------------------------------------------------------------
# models and images


class SmallCNN(nn.Module):
    """A small classifier (~0.1 MFLOP per pixel) so that the mask machinery, not the network, dominates."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def make_model(name: str, seed: int = 0) -> nn.Module:
    """Random-weight models (no downloads): 'small', 'resnet18', 'resnet50'."""
    torch.manual_seed(seed)
    if name == "small":
        model = SmallCNN()
    else:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
    return model.eval()


def smooth_images(n: int, size: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """Smooth-ish test images `[n, 3, size, size]`: blurred noise plus a bright Gaussian blob, roughly standardized.

    Image i depends only on (seed, i, size), not on n.
    """
    s = max(1.0, size / 32)
    width = math.ceil(3 * s)
    taps = torch.exp(-0.5 * (torch.arange(-width, width + 1, dtype=torch.float32) / s) ** 2)
    taps = taps / taps.sum()
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(1_000_003 * seed + i)
        noise = torch.randn(1, 3, size, size, generator=g)
        x = F.conv2d(F.pad(noise, (0, 0, width, width), mode="reflect"), taps.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        x = F.conv2d(F.pad(x, (width, width, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        x = x[0] / x.std()
        cy, cx = (torch.rand(2, generator=g) * 0.5 + 0.25) * size
        r = (torch.rand(1, generator=g) * 0.1 + 0.08) * size
        color = torch.rand(3, 1, 1, generator=g) * 2 + 1
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        out.append(0.5 * x + color * blob)
    return torch.stack(out).to(device)


def top1_targets(model: nn.Module, images: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return [int(t) for t in model(images).argmax(dim=1)]


# --------------------------------------------------------------------------------------------
# the two engines


def run_ours(model, images, targets, areas, iters, step, sigma, keep_history=False, variant="preserve", **extra):
    """One call of our engine on all images; returns (seconds, result)."""
    sync(images.device)
    start = time.perf_counter()
    result = extremal_perturbation(
        model, images, targets, areas=list(areas), variant=variant, max_iter=iters, step=step, sigma=sigma,
        keep_history=keep_history, **extra,
    )
    sync(images.device)
    return time.perf_counter() - start, result


def run_torchray(model, images, targets, areas, iters, step, sigma, variant="preserve", perturbation="blur"):
    """TorchRay, one image at a time (all areas at once); returns (seconds, [(mask [A,H,W], hist)])."""
    from torchray.attribution import extremal_perturbation as tr_mod

    model.eval()  # TorchRay does not switch the model to eval mode itself
    outs = []
    sync(images.device)
    start = time.perf_counter()
    for i in range(images.shape[0]):
        mask, hist = tr_mod.extremal_perturbation(
            model, images[i : i + 1], int(targets[i]), areas=list(areas), max_iter=iters, step=step, sigma=sigma,
            variant=variant, perturbation=perturbation,
        )
        outs.append((mask[:, 0].detach(), hist))
    sync(images.device)
    for p in model.parameters():  # TorchRay leaves the weights frozen; the next run finds them as they were
        p.requires_grad_(True)
    return time.perf_counter() - start, outs


def evaluate_masks(model, image, target, masks, settings_extra=None):
    """Our engine's reward evaluation of given masks `[A, H, W]` on one image `[1, 3, H, W]`: Φ_c(m ⊗ x), no jitter."""
    settings = ExtremalSettings.from_flat(**(settings_extra or {}))
    with torch.no_grad():
        pyramid = build_pyramid(image, settings.masks.num_levels, settings.masks.max_blur, settings.masks.perturbation)
        x = perturb(pyramid, masks.to(image.device)[None]).reshape(-1, *image.shape[1:])
        scores = model_scores(model, x, settings)
    return scores[:, int(target)].float().cpu()


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double().flatten()
    b = b.double().flatten()
    a = a - a.mean()
    b = b - b.mean()
    den = a.norm() * b.norm()
    if den == 0:
        return float("nan")
    return float((a @ b) / den)


# --------------------------------------------------------------------------------------------
# where the time of one iteration goes


def _clock(device, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


STAGES = ("mask_gen", "perturb", "network", "area", "optim")


def split_ours(model, images, targets, areas, step, sigma, reps=5, settings_extra=None):
    """Median seconds per stage (forward+backward each) of one of our iterations on B images x A areas.

    The iteration is cut into stages with detached leaves in between, so each backward is timed
    on its own: mask generation (SmoothMaskGenerator.generate), perturbation (pyramid blend),
    network (forward + backward to the input), area penalty (sort), SGD step + clamp.
    """
    dev = images.device
    b, _, h, w = images.shape
    a = len(areas)
    settings = ExtremalSettings.from_flat(areas=tuple(areas), step=step, sigma=sigma, **(settings_extra or {}))
    fused = settings.execution.compiles(dev)  # the engine's generator: the compiled fused map where compile is on
    gen = SmoothMaskGenerator(h, w, step, sigma, settings.masks.smooth_max_coldness, fused=fused)
    model = engine_model(model, settings)  # the network the engine runs (rewrites, layout, weights cast once)
    pyramid = build_pyramid(images, settings.masks.num_levels, settings.masks.max_blur, settings.masks.perturbation)
    params = torch.full((b * a, *gen.geometry.param_shape), 0.7, device=dev)
    params = (params + 0.3 * torch.rand_like(params)).clamp(0, 1).requires_grad_(True)
    mask_areas = area_plan(torch.tensor(areas).repeat(b).tolist(), gen.geometry.num_entries, dev)
    tgt = torch.as_tensor(targets, device=dev).repeat_interleave(a)
    opt = torch.optim.SGD([params], lr=0.01, momentum=0.9, dampening=0.9)
    for p in model.parameters():
        p.requires_grad_(False)
    times = {k: [] for k in STAGES}
    for rep in range(reps + 1):
        d0, (masks, full) = _clock(dev, lambda: gen.generate(params))
        m_leaf = masks.detach().requires_grad_(True)
        f_leaf = full.detach().requires_grad_(True)
        native = settings.execution.native_cpu_kernels and not fused
        d1, x = _clock(dev, lambda: perturb(pyramid, m_leaf.view(b, a, h, w), native).reshape(-1, 3, h, w))
        x_leaf = x.detach().requires_grad_(True)
        d2, gain = _clock(dev, lambda: model_scores(model, torch.flip(x_leaf, dims=(3,)), settings).gather(1, tgt[:, None]))
        d3, pen = _clock(dev, lambda: 300.0 * area_loss(f_leaf, mask_areas))
        e2, _ = _clock(dev, lambda: (-gain.sum()).backward())
        e3, _ = _clock(dev, lambda: pen.sum().backward())
        e1, _ = _clock(dev, lambda: x.backward(x_leaf.grad))
        e0, _ = _clock(dev, lambda: torch.autograd.backward([masks, full], [m_leaf.grad, f_leaf.grad]))

        def step_():
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                params.clamp_(0, 1)

        e4, _ = _clock(dev, step_)
        if rep == 0:
            continue  # warm-up
        for k, v in zip(STAGES, (d0 + e0, d1 + e1, d2 + e2, d3 + e3, e4)):
            times[k].append(v)
    return {k: statistics.median(v) for k, v in times.items()}


def split_torchray(model, image, target, areas, step, sigma, reps=5):
    """The same stages for TorchRay's pieces (MaskGenerator, Perturbation, sort) on one image x A areas."""
    from torchray.attribution.extremal_perturbation import MaskGenerator, Perturbation

    dev = image.device
    a = len(areas)
    pert = Perturbation(image, num_levels=8, type="blur")
    gen = MaskGenerator(pert.pyramid.shape[2:], step, sigma).to(dev)
    h, w = gen.shape_in
    pmask = (0.7 + 0.3 * torch.rand(a, 1, h, w, device=dev)).clamp(0, 1).requires_grad_(True)
    max_area = math.prod(gen.shape_out)
    reference = torch.ones(a, max_area, device=dev)
    for i, ar in enumerate(areas):
        reference[i, : int(max_area * (1 - ar))] = 0
    opt = torch.optim.SGD([pmask], lr=0.01, momentum=0.9, dampening=0.9)
    for p in model.parameters():
        p.requires_grad_(False)
    times = {k: [] for k in STAGES}
    for rep in range(reps + 1):
        d0, (mask_, mask) = _clock(dev, lambda: gen.generate(pmask))
        c_leaf = mask_.detach().requires_grad_(True)
        f_leaf = mask.detach().requires_grad_(True)
        d1, x = _clock(dev, lambda: pert.apply(c_leaf))
        x_leaf = x.detach().requires_grad_(True)
        d2, y = _clock(dev, lambda: model(torch.flip(x_leaf, dims=(3,)))[:, target])
        d3, reg = _clock(
            dev, lambda: 300.0 * ((f_leaf.reshape(a, -1).sort(dim=1)[0] - reference) ** 2).mean(dim=1)
        )
        e2, _ = _clock(dev, lambda: (-y.sum()).backward())
        e3, _ = _clock(dev, lambda: reg.sum().backward())
        e1, _ = _clock(dev, lambda: x.backward(x_leaf.grad))
        e0, _ = _clock(dev, lambda: torch.autograd.backward([mask_, mask], [c_leaf.grad, f_leaf.grad]))

        def step_tr():  # TorchRay's order: backward, step, clamp (zero_grad moved after the step)
            opt.step()
            opt.zero_grad()
            pmask.data = pmask.data.clamp(0, 1)

        e4, _ = _clock(dev, step_tr)
        if rep == 0:
            continue
        for k, v in zip(STAGES, (d0 + e0, d1 + e1, d2 + e2, d3 + e3, e4)):
            times[k].append(v)
    return {k: statistics.median(v) for k, v in times.items()}


def format_split(split: dict[str, float]) -> str:
    total = sum(split.values())
    parts = " ".join(f"{k} {1000 * v:8.1f}ms ({100 * v / total:4.1f}%)" for k, v in split.items())
    return f"total {1000 * total:8.1f}ms | {parts}"


# --------------------------------------------------------------------------------------------
# bookkeeping


def commit() -> str:
    """The checked-out commit (with "+dirty" for uncommitted changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor()


def environment() -> dict:
    env = {
        "commit": commit(),
        "cpu": cpu_model(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        env["loadavg"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torchray

        env["torchray"] = getattr(torchray, "__version__", "installed")
    except ImportError:
        env["torchray"] = None
    return env


def warn_oversubscription() -> None:
    """Warn when intra-op threads > 1 on a loaded machine without OMP_WAIT_POLICY=PASSIVE.

    Measured here (2 cores, load ~5 from other jobs): the small-CNN case took 38-133 s with 2
    threads and libgomp's default spin-waiting vs 2.3-4.4 s with 1 thread or with
    OMP_WAIT_POLICY=PASSIVE (which must be set before torch is imported).
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cores = os.cpu_count() or 1
    if torch.get_num_threads() > 1 and load > 0.75 * cores and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print(f"WARNING: load average {load:.1f} on {cores} cores with {torch.get_num_threads()} torch threads and "
              "OpenMP spin-waiting: timings can be 10-50x slower and erratic. Use --threads 1 or "
              "OMP_WAIT_POLICY=PASSIVE.", flush=True)


def start_run(threads: int | None) -> dict:
    """Thread count, the environment printed (and returned), and a warning on a loaded machine."""
    if threads:
        torch.set_num_threads(threads)
    env = environment()
    print("environment:", env)
    warn_oversubscription()
    return env


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    print(f"wrote {path}")


def timed(device, fn):
    """(fn(), its seconds), the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def print_and_write(path: str | None, result: dict) -> None:
    """Print a benchmark's numbers (not the environment, printed at the start), then ``write_json``."""
    for k, v in result.items():
        if k != "environment":
            print(f"{k}: {v}")
    write_json(path, result)


def median(xs):
    return statistics.median(xs) if xs else float("nan")
