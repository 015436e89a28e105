"""GPU check: what only a CUDA machine can measure, in one script under 10 minutes.

1. AMP training speed: ``labelfix train`` (resnet50, 224 px, AMP, channels_last, batch
   64, ``--workers``) against a plain timm training loop with the same model, data,
   transform, batch, AMP dtype and loader workers; images/s of each and their ratio
   (goal >= 0.9), and the same for LogicMix and BalanceMix relative to plain labelfix.
2. torchrun on every visible GPU: a short ``labelfix train`` under ``torchrun
   --nproc_per_node=<GPUs>`` must finish; its images/s is recorded.
3. ONNX parity on the CUDA execution provider: the exported model's logits under
   onnxruntime's CUDA provider (when the installed onnxruntime has it) against torch on
   the GPU; the largest absolute difference (contract: 1e-4 in float32).

Writes ``benchmarks/results/gpu_check.json`` (docs/benchmarks.md quotes it). Run:
``benchmarks/gpu_check`` (or ``python benchmarks/gpu_check.py [--images 2048] [--epochs 2]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def labelfix_run(data: Path, out: Path, args, **opts) -> dict:
    from labelfix.train import TrainConfig, train

    cfg = TrainConfig(data=str(data), out=str(out), backbone=args.backbone, img_size=args.size, epochs=args.epochs,
                      batch_size=args.batch_size, workers=args.workers, progress=False, randaugment=False,
                      hflip=0.0, amp=True, device="cuda", seed=0, lr=1e-3, **opts)
    t0 = time.perf_counter()
    res = train(cfg, log=lambda s: None)
    rows = res["metrics"][1:] or res["metrics"]
    return {"images_per_s": statistics.median(r["images_per_s"] for r in rows),
            "epoch_seconds": statistics.median(r["train_seconds"] + r.get("mixer_seconds", 0.0) for r in rows),
            "wall_seconds": time.perf_counter() - t0}


def plain_timm_loop(data: Path, args) -> float:
    """Images/s of a plain training loop: same model, transform, AMP dtype, batch, workers."""
    from plain_loop import plain_setup

    model, loader, opt = plain_setup(data, args.backbone, args.size, args.batch_size, args.workers,
                                     device="cuda", channels_last=True, pin_memory=True)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    rates = []
    for epoch in range(args.epochs):
        torch.cuda.synchronize()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x = x.cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=dtype):
                out = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y.cuda(non_blocking=True))
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            seen += x.shape[0]
        torch.cuda.synchronize()
        if epoch or args.epochs == 1:
            rates.append(seen / (time.perf_counter() - t0))
    return statistics.median(rates)


def torchrun_check(data: Path, out: Path, args) -> dict:
    gpus = torch.cuda.device_count()
    exe = shutil.which("labelfix") or str(Path(sys.executable).with_name("labelfix"))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nnodes=1", f"--nproc_per_node={gpus}", exe, "train", str(data),
           "--out", str(out), "--backbone", args.backbone, "--img-size", str(args.size), "--epochs", "1",
           "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--no-progress",
           "--no-randaugment", "--hflip", "0", "--mix", "none", "--device", "cuda"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    info = {"processes": gpus, "exit_code": res.returncode, "wall_seconds": time.perf_counter() - t0,
            "command": " ".join(cmd)}
    if res.returncode == 0:
        import pandas as pd

        info["images_per_s"] = float(pd.read_csv(out / "metrics.csv")["images_per_s"].iloc[-1])
    else:
        info["stderr_tail"] = res.stderr[-2000:]
    return info


def onnx_cuda_parity(run: Path, tmp: Path, args) -> dict:
    import onnxruntime as ort

    from labelfix.export.onnx import export_run
    from labelfix.models import load_checkpoint, model_from_checkpoint

    providers = ort.get_available_providers()
    info = {"onnxruntime": ort.__version__, "providers": providers}
    if "CUDAExecutionProvider" not in providers:
        info["cuda_provider"] = ("not available: the installed onnxruntime has no CUDA provider "
                                 "(install onnxruntime-gpu to check it)")
        return info
    path = export_run(run, tmp / "model.onnx")
    model = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "best.pt")).cuda().eval()
    x = torch.randn(8, 3, args.size, args.size)
    with torch.no_grad():
        ref = model(x.cuda()).float().cpu().numpy()
    sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    info.update(cuda_provider="used" if "CUDAExecutionProvider" in sess.get_providers() else "fell back",
                max_abs_diff=float(np.abs(got - ref).max()), contract=1e-4)
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing measured", file=sys.stderr)
        return 2
    from labelfix.data.demo import make_demo

    t0 = time.perf_counter()
    result = {"command": " ".join(["benchmarks/gpu_check"] + sys.argv[1:]),
              "gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
              "torch": torch.__version__, "cuda": torch.version.cuda, "platform": platform.platform(),
              "setup": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_demo(tmp / "demo", n_train=args.images, n_test=8, size=96, seed=0)["train"]
        plain = labelfix_run(data, tmp / "plain", args, mix="none")
        loop = plain_timm_loop(data, args)
        logic = labelfix_run(data, tmp / "logicmix", args, mix="logicmix")
        bmix = labelfix_run(data, tmp / "balancemix", args, mix="balancemix", balancemix_warmup=1)
        result["amp_images_per_s"] = {"labelfix_train": plain["images_per_s"], "plain_timm_loop": loop,
                                      "ratio": plain["images_per_s"] / loop, "goal": 0.9}
        result["method_cost_relative_to_plain_epoch"] = {
            "logicmix": logic["epoch_seconds"] / plain["epoch_seconds"],
            "balancemix": bmix["epoch_seconds"] / plain["epoch_seconds"]}
        result["torchrun"] = torchrun_check(data, tmp / "ddp", args)
        result["onnx"] = onnx_cuda_parity(tmp / "plain", tmp, args)
    result["wall_seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
