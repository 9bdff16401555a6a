"""Compiled C loops for the two per-pixel maps of an iteration, for float32 tensors on a CPU:
the smooth max of `masks.py` and the pyramid blend of `perturbation.py`.

The eager smooth max makes about ten memory passes over `[K, O, S, C]` chunks per iteration; the
C loops in `cpu_kernels.c` keep their running sums in L1 and vectorize the exponential, which is
about 4x faster for the same arithmetic (the blend: 2x, by avoiding torch's generic gather).
The source is compiled on first use by the system C compiler (`$CC`, else cc/gcc/clang; well
under a second, no torch headers) into a per-user cache and loaded with ctypes, which releases
the GIL, so the work is split across `torch.get_num_threads()` Python threads. Without a
compiler, or if the build fails, `library()` is None and callers keep the eager code.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .masks import MaskGeometry

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# No -ffast-math: it would set flush-to-zero for the whole process when the library loads.
_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-shared", "-fPIC")
# `$EXTREMAL_CORE_MARCH` picks the target: `native` (default), any `-march` value such as
# `x86-64-v2` for a build that runs on every machine of a mixed cluster, or `none`.
MARCH_VARIABLE = "EXTREMAL_CORE_MARCH"
# `EXTREMAL_CORE_NATIVE_KERNELS=0` turns the compiled loops off for the whole process: every CPU
# run takes the PyTorch ops, as GPUs do (to run a test suite or a comparison on that path).
SWITCH_VARIABLE = "EXTREMAL_CORE_NATIVE_KERNELS"
_SLOWER = "the CPU smooth max and pyramid blend run as (slower) PyTorch ops"


def cache_dir() -> Path:
    """`$EXTREMAL_CORE_CACHE`, else `$XDG_CACHE_HOME/extremal_core` (default `~/.cache`)."""
    if os.environ.get("EXTREMAL_CORE_CACHE"):
        return Path(os.environ["EXTREMAL_CORE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "extremal_core"


def _cpu_signature() -> str:
    """What -march=native depends on, so a cache shared by different machines stays correct."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("flags", "Features", "model name"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def march() -> str:
    """The `-march` target of the build: `$EXTREMAL_CORE_MARCH`, default `native`."""
    return os.environ.get(MARCH_VARIABLE, "native").strip() or "none"


def compile_library(compiler: str | None = None, directory: Path | None = None) -> Path | None:
    """Build `cpu_kernels.c` into a shared library (cached by source, flags and CPU); None on failure."""
    cc = compiler or os.environ.get("CC") or next(
        (c for c in ("cc", "gcc", "clang") if shutil.which(c)), None
    )
    if cc is None or shutil.which(cc) is None:
        log.warning("no C compiler found (%s): %s", cc or "cc/gcc/clang", _SLOWER)
        return None
    directory = directory or cache_dir()
    source = SOURCE.read_bytes()
    target = march()
    attempts = ((_FLAGS + (f"-march={target}",), _FLAGS) if target != "none" else (_FLAGS,))
    for flags in attempts:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cc.encode(),
                                         platform.machine().encode(), _cpu_signature().encode()]))
        target = directory / f"cpu_kernels-{key.hexdigest()[:16]}.so"
        if target.exists():
            return target
        tmp = None
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Several processes may build at once: each writes its own file, then renames it.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
            os.close(fd)
            subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], check=True, capture_output=True, timeout=120)
            os.replace(tmp, target)
            return target
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            log.warning("building %s with %s %s failed: %s %s", SOURCE.name, cc, " ".join(flags), exc,
                        detail.decode(errors="replace")[-500:])
            if tmp:
                Path(tmp).unlink(missing_ok=True)
    return None


def disabled() -> bool:
    """True when `$EXTREMAL_CORE_NATIVE_KERNELS` is 0: the compiled loops are turned off."""
    return os.environ.get(SWITCH_VARIABLE, "1").strip() == "0"


def library() -> ctypes.CDLL | None:
    """The loaded kernels for the current `march()`, built on first call; None when they cannot be
    built or loaded, or are turned off."""
    return None if disabled() else _load(march())


@functools.cache
def _load(target: str) -> ctypes.CDLL | None:
    path = compile_library()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.warning("loading %s failed (%s): %s", path, exc, _SLOWER)
        return None
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.smooth_max_forward.argtypes = [ptr] * 4 + [i64] * 8 + [f32]
    lib.smooth_max_backward.argtypes = [ptr] * 5 + [i64] * 8 + [f32]
    lib.smooth_max_forward.restype = lib.smooth_max_backward.restype = ctypes.c_int
    lib.perturb_forward.argtypes = [ptr] * 3 + [i64] * 5
    lib.perturb_backward.argtypes = [ptr] * 4 + [i64] * 5
    lib.perturb_forward.restype = lib.perturb_backward.restype = ctypes.c_int
    return lib


def supports(*tensors: torch.Tensor) -> bool:
    """True when the kernels are built and every tensor is float32 on the CPU."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and library() is not None


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpu-kernels")


def _split_rows(run, rows: int) -> None:
    """Call `run(r0, r1)` on contiguous ranges of rows (masks, images), one per torch thread."""
    workers = max(1, min(rows, torch.get_num_threads()))
    if workers == 1:
        run(0, rows)
        return
    bounds = [rows * i // workers for i in range(workers + 1)]
    for future in [_pool(workers).submit(run, k0, k1) for k0, k1 in zip(bounds, bounds[1:])]:
        future.result()


def _at(t: torch.Tensor, row: int) -> int:
    """Address of row `row` along the first dimension of contiguous `t`."""
    return t.data_ptr() + row * t[0].numel() * t.element_size()


def _geometry_args(params: torch.Tensor, geometry: MaskGeometry) -> tuple[int, ...]:
    hc, wc = geometry.cell_shape
    return (*params.shape[1:], geometry.padding, geometry.window, hc, wc, geometry.step**2)


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("cpu_kernels: out of memory for a work buffer")


def smooth_max_forward(
    params: torch.Tensor, table: torch.Tensor, geometry: MaskGeometry, coldness: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """params `[K, Hp, Wp]`, table `[O, S]` -> (smooth max `[K, S, C]`, normaliser `[K, S, C]`)."""
    params, table = params.contiguous(), table.contiguous()
    k, s, c = params.shape[0], table.shape[1], geometry.cell_shape[0] * geometry.cell_shape[1]
    out, norm = params.new_empty(k, s, c), params.new_empty(k, s, c)
    lib, shape = library(), _geometry_args(params, geometry)
    _split_rows(
        lambda k0, k1: _check(lib.smooth_max_forward(
            _at(params, k0), table.data_ptr(), _at(out, k0), _at(norm, k0), k1 - k0, *shape, coldness
        )),
        k,
    )
    return out, norm


def smooth_max_backward(
    params: torch.Tensor,
    table: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    geometry: MaskGeometry,
    coldness: float,
) -> torch.Tensor:
    """Gradient `[K, Hp, Wp]` w.r.t. params from the `[K, S, C]` factors a, b of masks.py."""
    params, table, a, b = params.contiguous(), table.contiguous(), a.contiguous(), b.contiguous()
    grad = torch.empty_like(params)
    lib, shape = library(), _geometry_args(params, geometry)
    _split_rows(
        lambda k0, k1: _check(lib.smooth_max_backward(
            _at(params, k0), table.data_ptr(), _at(a, k0), _at(b, k0), _at(grad, k0), k1 - k0, *shape, coldness
        )),
        params.shape[0],
    )
    return grad


def _blend_args(pyramid: torch.Tensor, masks: torch.Tensor) -> tuple[int, ...]:
    _, levels, channels, h, w = pyramid.shape
    return masks.shape[1], levels, channels, h * w


def perturb_forward(pyramid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """pyramid `[B, L, C, H, W]`, masks `[B, K, H, W]` -> blended images `[B, K, C, H, W]`."""
    pyramid, masks = pyramid.contiguous(), masks.contiguous()
    b, k = masks.shape[:2]
    out = masks.new_empty(b, k, *pyramid.shape[2:])
    lib, shape = library(), _blend_args(pyramid, masks)
    _split_rows(
        lambda b0, b1: _check(lib.perturb_forward(_at(pyramid, b0), _at(masks, b0), _at(out, b0), b1 - b0, *shape)), b
    )
    return out


def perturb_backward(pyramid: torch.Tensor, masks: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient `[B, K, H, W]` w.r.t. masks (the pyramid is a constant)."""
    pyramid, masks, grad_out = pyramid.contiguous(), masks.contiguous(), grad_out.contiguous()
    grad = torch.empty_like(masks)
    lib, shape = library(), _blend_args(pyramid, masks)
    _split_rows(
        lambda b0, b1: _check(lib.perturb_backward(
            _at(pyramid, b0), _at(masks, b0), _at(grad_out, b0), _at(grad, b0), b1 - b0, *shape
        )),
        masks.shape[0],
    )
    return grad
