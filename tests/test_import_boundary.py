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


# The layers inside `pipeline/`, bottom up: a module imports only from its own layer or below.
# Pure metrics at the bottom (no Ray, no other pipeline module); the per-shard machinery above the
# building blocks; the evaluations that run over outputs above that; the report on top. Every
# module not named here is a building block (layer 1).
LAYERS = {
    "pipeline.metrics": 0,
    "pipeline.tasks": 2, "pipeline.channels": 2, "pipeline.worker": 2, "pipeline.driver": 2, "pipeline.cli": 2,
    "pipeline.evaluation": 3,
    "pipeline.report": 4,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return 1


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at any depth of its code (jobs import lazily in `main`)."""
    import ast

    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
    return out


def _modules(folder: str) -> dict[str, Path]:
    root = Path(__file__).resolve().parents[1]
    out = {}
    for p in (root / folder).rglob("*.py"):
        parts = list(p.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def test_pipeline_layers_import_nothing_above_them():
    upward = []
    for module, path in _modules("pipeline").items():
        for imported in _imports(path, module):
            if imported.split(".")[0] == "pipeline" and _layer(imported) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {imported} (layer {_layer(imported)})")
    assert not upward, upward


def test_metrics_import_no_ray_and_no_other_pipeline_module():
    found = []
    for module, path in _modules("pipeline/metrics").items():
        for imported in _imports(path, module):
            top = imported.split(".")[0]
            if top == "ray" or (top == "pipeline" and not imported.startswith("pipeline.metrics")):
                found.append(f"{module} imports {imported}")
    assert not found, found


def test_jobs_do_not_import_jobs():
    found = []
    for module, path in _modules("jobs").items():
        found += [f"{module} imports {i}" for i in _imports(path, module) if i.split(".")[0] == "jobs"]
    assert not found, found
