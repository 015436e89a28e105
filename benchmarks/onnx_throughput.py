"""Throughput of the exported ONNX model under onnxruntime (CPU) vs torch eager (CPU).

Same model (a timm backbone with the linear head, random init, eval mode), same input
batch, same thread count, measured in one process; the two engines alternate batch by
batch so that background load on a shared machine affects both alike. Writes
``benchmarks/results/onnx_throughput.json``.

    python benchmarks/onnx_throughput.py [--backbone resnet18] [--img-size 224]
        [--batch 16] [--iters 10] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from labelfix.export.onnx import export_onnx
from labelfix.io.atomic import write_json
from labelfix.models import create_model, model_config

RESULTS = Path(__file__).resolve().parent / "results" / "onnx_throughput.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--num-classes", type=int, default=80)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=10, help="timed batches per engine")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = create_model(args.backbone, "linear", num_classes=args.num_classes, img_size=args.img_size).eval()
    cfg = model_config(model)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.img_size, args.img_size), dtype=np.float32)
    xt = torch.from_numpy(x)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        t0 = time.perf_counter()
        export_onnx(model, path, class_names=[f"c{i}" for i in range(args.num_classes)],
                    img_size=args.img_size, mean=cfg["mean"], std=cfg["std"])
        export_s = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def run_ort():
            return sess.run(None, {"input": x})[0]

        def run_torch():
            with torch.inference_mode():
                return model(xt).numpy()

        max_diff = float(np.max(np.abs(run_ort() - run_torch())))
        for _ in range(args.warmup):
            run_torch(), run_ort()
        times = {"torch": [], "onnxruntime": []}
        for _ in range(args.iters):  # alternate engines, batch by batch
            for name, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)

    def ips(ts: list[float]) -> float:
        return args.batch / statistics.median(ts)

    result = {
        "backbone": args.backbone, "head": "linear", "num_classes": args.num_classes,
        "img_size": args.img_size, "batch": args.batch, "iters": args.iters, "threads": args.threads,
        "torch_eager_images_per_s": round(ips(times["torch"]), 2),
        "onnxruntime_images_per_s": round(ips(times["onnxruntime"]), 2),
        "speedup_onnxruntime_over_torch": round(ips(times["onnxruntime"]) / ips(times["torch"]), 3),
        "target_speedup": 1.3,
        "statistic": "batch size / median seconds per batch",
        "max_abs_logit_diff": max_diff,
        "export_seconds": round(export_s, 1),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__,
                     "python": platform.python_version()},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
    }
    write_json(args.out, result)
    print(f"torch eager {result['torch_eager_images_per_s']} img/s, onnxruntime "
          f"{result['onnxruntime_images_per_s']} img/s, ratio {result['speedup_onnxruntime_over_torch']}x "
          f"-> {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
