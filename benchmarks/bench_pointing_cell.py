"""What one cell of the paper's pointing-game table costs: seconds per (image, class) pair of our
explainer from the cell's benchmark config (`configs/benchmark`) against TorchRay's benchmark
script's call for the same method (`examples/attribution_benchmark.py`, one image at a time),
on TorchRay's model for the cell with random weights in its checkpoint format, and the hours a
cell's pairs would take at that rate on this machine.

Images are VOC-sized (500 x 375 and 375 x 500, alternating), at the benchmark's 224 px shorter
side. RISE and extremal perturbation run `--rise-masks` / `--ep-iters` and are scaled to 8,000
masks / 800 iterations (their cost is linear in them: one network pass per mask batch / per
iteration; fixed costs are scaled too, so use enough of them for a fair extrapolation).
TorchRay's RISE is per image (all classes at once), so its per-pair time divides by
`--pairs-per-image`. Our pairs go one per call here, like TorchRay's (the jobs batch images of
one size). Pairs per cell = `--images` x `--pairs-per-image` (VOC07 test: 4,952 images, ~1.4).

    python benchmarks/bench_pointing_cell.py --cell voc07_vgg16 --device cuda --out benchmarks/results/cell_voc07_vgg16_gpu.json
    python benchmarks/bench_pointing_cell.py --cell voc07_resnet50 --pairs 2 --ep-iters 2 --rise-masks 64   # CPU smoke
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, start_run, sync, write_json  # noqa: E402
from torchray.benchmark.models import get_transform  # noqa: E402

from pipeline.config_load import load_config  # noqa: E402
from pipeline.method import build_explainer  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from tests.paper import torchray_reference as ref  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "benchmark"
METHODS = ("gradient", "guided_backprop", "grad_cam", "rise", "extremal")
FULL = {"rise": 8000, "extremal": 800}


def _models(cell: str, folder: Path, hidden: int):
    """(checkpoint path, TorchRay's model with its global pool, TorchRay's with the sliding pool)."""
    dataset, arch = cell.split("_")
    classes = 20 if dataset == "voc07" else 80
    if arch == "vgg16":
        state = ref.vgg16_checkpoint(classes, hidden)
        model = ref.torchray_vgg16(state, classes)
        return ref.save_checkpoint(state, folder, arch, dataset), model, model
    path = ref.save_checkpoint(ref.resnet50_checkpoint(classes), folder, arch, dataset)
    env = pytest.MonkeyPatch()  # TORCH_HOME for TorchRay's get_model, restored after
    model = ref.torchray_get_model(arch, dataset, folder, env)
    env.undo()
    sliding = copy.deepcopy(model)
    sliding.avgpool = torch.nn.AvgPool2d((7, 7), stride=1)  # the script's patch for the gradient family
    return path, model, sliding


def _time(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cells = [f"{d}_{a}" for d in ("voc07", "coco14") for a in ("vgg16", "resnet50")]
    p.add_argument("--cell", default="voc07_vgg16", choices=cells)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--pairs", type=int, default=4, help="timed pairs per method (after one warm-up)")
    p.add_argument("--rise-masks", type=int, default=512)
    p.add_argument("--ep-iters", type=int, default=50)
    p.add_argument("--hidden", type=int, default=4096, help="VGG16's fc6 / fc7 width (4096: TorchRay's)")
    p.add_argument("--images", type=int, default=4952)
    p.add_argument("--pairs-per-image", type=float, default=1.4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    env = start_run(args.threads)
    device = torch.device(args.device)
    results = {"environment": env, "args": vars(args), "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path, global_pool, sliding = _models(args.cell, Path(tmp), args.hidden)
        for method in args.methods.split(","):
            name = f"{args.cell}.yaml" if method == "extremal" else f"methods/{args.cell}_{method}.yaml"
            cfg = load_config(str(CONFIGS / name), [f"model.checkpoint={path}", f"extremal.max_iter={args.ep_iters}",
                                                     *([f"method.num_masks={args.rise_masks}"] if method == "rise" else [])])
            loaded = load_model(cfg.model, device)
            explainer = build_explainer(cfg, loaded.model)
            theirs = (sliding if cfg.model.options.get("pool") == "sliding" else global_pool).to(device)
            layer, areas = cfg.method.params.get("layer", ""), list(cfg.extremal.optim.areas)
            call = ref.torchray_call(theirs, layer, areas, args.rise_masks, args.ep_iters)
            transform = get_transform(ref.TORCHRAY_DATASET[cfg.model.dataset], 224)
            ours_s, theirs_s = [], []
            for i in range(args.pairs + 1):
                size = (500, 375) if i % 2 == 0 else (375, 500)
                img = ref.blob_image(*size, i)
                x = loaded.preprocess(img)[0][None].to(device)
                a = _time(lambda: explainer.explain(x, [i % 20]), device)
                b = _time(lambda: call(method, transform(img)[None].to(device), i % 20, size), device)
                if i:  # the first pair warms up both
                    ours_s.append(a)
                    theirs_s.append(b)
            scale = FULL.get(method, 1) / {"rise": args.rise_masks, "extremal": args.ep_iters}.get(method, 1)
            ours_pair = median(ours_s) * scale
            theirs_pair = median(theirs_s) * scale / (args.pairs_per_image if method == "rise" else 1)
            pairs = args.images * args.pairs_per_image
            row = {"ours_s_per_pair": ours_pair, "torchray_s_per_pair": theirs_pair, "speedup": theirs_pair / ours_pair,
                   "ours_cell_hours": ours_pair * pairs / 3600, "torchray_cell_hours": theirs_pair * pairs / 3600}
            results["methods"][method] = row
            print(f"{args.cell} {method:16s} ours {ours_pair:8.3f} s/pair  TorchRay {theirs_pair:8.3f} s/pair  "
                  f"x{row['speedup']:5.2f}  cell: ours {row['ours_cell_hours']:7.2f} h, TorchRay "
                  f"{row['torchray_cell_hours']:7.2f} h", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
