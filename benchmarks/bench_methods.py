"""The comparison methods: images/s of ours against TorchRay's implementation of the same method,
and Parquet bytes per image per method at 224x224.

Speed: each method explains the same B images with the same model, ours in one call (`make_explainer`
+ `explain`), TorchRay one image per call as its API takes them; the two alternate in every repeat
and the median of the per-repeat ratios is printed. Meaningful perturbation has no TorchRay
implementation: its baseline is ours run one image per optimisation, as the official code does.
Cases: `demo` (the demo CNN at 64x64, the method defaults, RISE on --demo-masks masks) and
`resnet18` (torchvision ResNet-18, random weights, 224x224, RISE on --resnet-masks masks and
meaningful perturbation on --resnet-iters iterations: the ratio is per network pass, so fewer
passes keep it while the CPU run stays short).

Bytes: the trained demo CNN on the demo's known-answer images upsampled to 224x224, every method
at its defaults (RISE 8,000 masks, meaningful perturbation 300 iterations, extremal 3 areas), the
maps written by the pipeline's own writer (`pipeline.schema`) as `tensor` and as `png`.

    python benchmarks/bench_methods.py --threads 1 --out benchmarks/results/bench_methods_cpu.json
    python benchmarks/bench_methods.py --device cuda --cases resnet18 --images 32 --resnet-masks 8000 \
        --resnet-iters 300 --skip-bytes --out benchmarks/results/bench_methods_gpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import make_model, median, smooth_images, start_run, sync, write_json  # noqa: E402
from torchray.attribution.grad_cam import grad_cam  # noqa: E402
from torchray.attribution.gradient import gradient  # noqa: E402
from torchray.attribution.guided_backprop import guided_backprop  # noqa: E402
from torchray.attribution.rise import rise  # noqa: E402

from extremal_core import make_explainer  # noqa: E402
from pipeline.schema import rows_to_table, table_to_parquet_bytes  # noqa: E402

METHODS = ("gradient", "guided_backprop", "grad_cam", "rise", "meaningful_perturbation")


def demo_model_and_images(n: int, size: int):
    from demo import build_demo_model, ensure_demo_assets, make_synthetic_images, to_model_input

    assets = ensure_demo_assets("./outputs/demo_data", num_threads=1)
    model = build_demo_model(assets.num_classes)
    model.load_state_dict(torch.load(assets.checkpoint, map_location="cpu", weights_only=True))
    images, labels, _ = make_synthetic_images(n, assets.size, assets.num_classes, 12345)
    x = to_model_input(images)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return model.eval(), x, [int(v) for v in labels]


def torchray_call(method: str, model, image, target: int, params: dict):
    if method == "rise":
        return rise(model, image, num_masks=params.get("num_masks", 8000))[:, target:target + 1]
    if method == "grad_cam":
        return grad_cam(model, image, target, saliency_layer=params["layer"], resize=True)
    return {"gradient": gradient, "guided_backprop": guided_backprop}[method](model, image, target)


def time_method(method: str, model, images, targets, params: dict, repeats: int) -> dict:
    ours = make_explainer(method, model, **params)
    if method == "meaningful_perturbation":
        one_by_one = make_explainer(method, model, **params, batch_size=1)

        def baseline():
            one_by_one.explain(images, targets)
    else:
        def baseline():
            for i, t in enumerate(targets):
                torchray_call(method, model, images[i:i + 1].clone(), t, params)
    ours.explain(images[:1], targets[:1])  # warm-up (allocator, Captum hooks, cuDNN plans)
    ratios, t_ours, t_base = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours.explain(images, targets)
        sync(images.device)
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        baseline()
        sync(images.device)
        t_base.append(time.perf_counter() - start)
        ratios.append(t_base[-1] / t_ours[-1])
    b = len(targets)
    return {"ours_images_per_s": b / median(t_ours), "baseline_images_per_s": b / median(t_base), "ratio": median(ratios),
            "baseline": "ours, one image per optimisation" if method == "meaningful_perturbation" else "TorchRay"}


def speed(args) -> dict:
    cases = {}
    device = torch.device(args.device)
    if "demo" in args.cases:
        model, x, t = demo_model_and_images(args.images, 64)
        model, x = model.to(device), x.to(device)
        cases["demo"] = (model, x, t, {"grad_cam": {"layer": "features.11"}, "rise": {"num_masks": args.demo_masks},
                                      "meaningful_perturbation": {"mask_scale": 4, "mask_blur": 2.0, "null_blur": 5.0,
                                                                  "l1": 1e-3, "max_iter": args.demo_iters}})
    if "resnet18" in args.cases:
        model = make_model("resnet18").to(device)
        x = smooth_images(args.images, 224, device=device)
        with torch.no_grad():
            t = model(x).argmax(1).tolist()
        cases["resnet18"] = (model, x, t, {"grad_cam": {"layer": "layer4"}, "rise": {"num_masks": args.resnet_masks},
                                          "meaningful_perturbation": {"max_iter": args.resnet_iters}})
    out = {}
    for case, (model, x, t, params) in cases.items():
        for method in METHODS:
            r = time_method(method, model, x, t, params.get(method, {}), args.repeats)
            out[f"{case}/{method}"] = r
            print(f"{case:9s} {method:24s} ours {r['ours_images_per_s']:8.3f} img/s   {r['baseline']:33s} "
                  f"{r['baseline_images_per_s']:8.3f} img/s   ratio {r['ratio']:5.2f}x  (B={len(t)})", flush=True)
    return out


def parquet_bytes(args) -> dict:
    model, x, t = demo_model_and_images(args.bytes_images, 224)
    params = {"grad_cam": {"layer": "features.11"}, "extremal": {"areas": [0.05, 0.1, 0.2], "max_iter": args.extremal_iters}}
    out = {}
    for method in ("center", "extremal", *METHODS):
        maps = make_explainer(method, model, **params.get(method, {})).explain(x, t).maps.numpy()
        rows = [{"key": f"k{i}", "maps": maps[i]} for i in range(len(t))]
        sizes = {fmt: len(table_to_parquet_bytes(rows_to_table(rows, fmt, maps.shape[1:] if fmt == "tensor" else None)))
                 / len(t) for fmt in ("tensor", "png")}
        out[method] = {"maps_per_row": maps.shape[1], **sizes}
        print(f"bytes/image at 224x224  {method:24s} maps {maps.shape[1]}  tensor {sizes['tensor'] / 1024:6.1f} KB   "
              f"png {sizes['png'] / 1024:6.1f} KB", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="demo,resnet18")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--demo-masks", type=int, default=2000)
    p.add_argument("--demo-iters", type=int, default=100)
    p.add_argument("--resnet-masks", type=int, default=128)
    p.add_argument("--resnet-iters", type=int, default=5)
    p.add_argument("--bytes-images", type=int, default=4)
    p.add_argument("--extremal-iters", type=int, default=300)
    p.add_argument("--skip-bytes", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda (speed only; the bytes are measured on the CPU)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    env = start_run(args.threads)
    results = {"environment": env, "args": vars(args), "speed": speed(args)}
    if not args.skip_bytes:
        results["parquet_bytes_per_image"] = parquet_bytes(args)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
