"""docs/README.md, "Architecture": `extremal_core` is pure PyTorch; distribution and storage stay in `pipeline/`;
one concept per module, none over 400 lines."""

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("ray", "fsspec", "pyarrow")

CHECK = f"""
import importlib, pkgutil, sys
import extremal_core
names = [m.name for m in pkgutil.walk_packages(extremal_core.__path__, "extremal_core.")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
print(len(names), "modules;", "loaded:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_extremal_core_imports_no_ray_fsspec_or_pyarrow():
    # A fresh interpreter: this test process has long since imported the pipeline's dependencies.
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(done.stdout.split()[0]) >= 15, done.stdout  # the walk reached the submodules


def test_no_pipeline_or_demo_module_over_400_lines():
    root = Path(__file__).resolve().parents[1]
    # sub-packages too (pipeline/datasets, pipeline/evaluation), and the jobs' entry points
    modules = [p for d in ("pipeline", "demo", "jobs") for p in (root / d).rglob("*.py")]
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in modules}
    assert sizes and not {p: n for p, n in sizes.items() if n > 400}


WORKER = """
import sys
import torch
from extremal_core.methods import get_method
import pipeline.worker, pipeline.driver
get_method("extremal")(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))
before = sorted({m.split(".")[0] for m in sys.modules} & {"captum", "matplotlib"})
get_method("gradient")(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))
print(before, "captum" in sys.modules)
"""


def test_a_worker_without_a_captum_method_does_not_import_captum():
    # Captum's package import pulls in matplotlib (about a second of every worker's start).
    done = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["[]", "True"], done.stdout
