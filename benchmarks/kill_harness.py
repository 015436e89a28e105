"""Kill-safety campaign: >= 20 random SIGKILLs per labelfix command.

For each command that exists in this checkout (info, noise, train, clean, export onnx,
export coco), runs it once uninterrupted to time it, then ``--kills`` times with a
SIGKILL at a uniform random moment of that duration, and checks after each kill that
the inputs are byte-identical and every output file is absent or complete
(labelfix.bench.killtest); runs whose kill time fell after the command finished are
made up by further runs (min_kills). Every 5th run is re-run to completion to check
recovery (train: with --resume once the killed run has written checkpoints/last.pt). Writes benchmarks/results/kill_harness.json.

``labelfix review`` is not included: its output is a FiftyOne (MongoDB) dataset, not
files, and a SIGKILL of it also ends the database server it started.

    .venv/bin/python benchmarks/kill_harness.py                 # all commands, 20 kills each
    .venv/bin/python benchmarks/kill_harness.py --commands noise clean --kills 30
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from labelfix.bench.killtest import LABELFIX, kill_campaign

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "kill_harness.json"
ENV = {"OMP_NUM_THREADS": "2"}
TRAIN_ARGS = ["--backbone", "test_resnet", "--img-size", "32", "--epochs", "2", "--batch-size", "8",
              "--workers", "0", "--no-progress", "--device", "cpu", "--val-split", "0.25"]
COMMANDS = ("info", "noise", "train", "clean", "export-onnx", "export-coco")


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_ok(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV})
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd[len(LABELFIX):])} failed:\n{r.stderr[-3000:]}")


def copier(src: Path, sub: str | None = None):
    def prepare(out: Path) -> None:
        dst = out / sub if sub else out
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    return prepare


def campaigns(work: Path, names: list[str], kills: int, seed: int) -> list[dict]:
    from labelfix.data.demo import make_demo

    demo = make_demo(work / "demo", n_train=64, n_test=16, size=32, seed=0)
    coco = Path(demo["train"])
    n_img = len(json.loads(coco.read_text())["images"])
    n_cls = len(json.loads(coco.read_text())["categories"])
    out = []

    def go(name, cmd, inputs, **kw):
        t0 = time.perf_counter()
        # more runs while fewer than ``kills`` of them were killed before finishing
        s = kill_campaign(name, cmd, inputs, work / name, n_runs=kills, seed=seed, env=ENV, rerun_every=5,
                          min_kills=kills, **kw)
        s["campaign_s"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {s['runs']} runs, {s['kills']} kills, {s['corrupted_files']} corrupted files, "
              f"{s['inputs_changed']} changed inputs, {s['reruns_failed']} failed re-runs ({s['campaign_s']} s)",
              flush=True)
        out.append(s)

    if "info" in names:
        go("info", [*LABELFIX, "info", str(coco), "--json"], [coco, coco.parent])
    if "noise" in names:
        go("noise", [*LABELFIX, "noise", str(coco), "--kind", "flip", "--rate", "0.2", "--out", "{out}/noisy.json",
                    "--overwrite"],   # a re-run after a kill that came after the files were written
           [coco], window=(0.1, 0.95))
    trained = work / "trained"
    need_run = {"train", "export-onnx", "export-coco"} & set(names)
    if need_run and have("labelfix.cli.train"):
        run_ok([*LABELFIX, "train", str(coco), "--out", str(trained), *TRAIN_ARGS])
    shapes = {"labels.npy": (n_img, n_cls), "stats/*.npy": (n_img, n_cls), "cells/*.npy": (n_img, n_cls),
              "split.npy": (n_img,), "run/labels.npy": (n_img, n_cls), "run/stats/*.npy": (n_img, n_cls),
              "run/cells/*.npy": (n_img, n_cls), "run/split.npy": (n_img,)}
    if "train" in names and have("labelfix.cli.train"):
        train_cmd = [*LABELFIX, "train", str(coco), "--out", "{out}/run", *TRAIN_ARGS]

        def resume(out: Path) -> list[str]:  # recovery: --resume once a checkpoint exists
            return train_cmd + ["--resume"] if (out / "run" / "checkpoints" / "last.pt").exists() else train_cmd

        go("train", train_cmd, [coco, coco.parent], expected_shapes=shapes, rerun_cmd=resume)
    if "clean" in names and have("labelfix.cli.clean"):
        from labelfix.bench.synthetic import make_synthetic_run

        n, k = 2000, 20
        base = make_synthetic_run(work / "synthetic", n, k, seed=0)
        inputs = ["{out}/labels.npy", "{out}/images.csv", "{out}/classes.json", "{out}/stats/logits.npy",
                  "{out}/stats/loss_mean.npy"]
        go("clean", [*LABELFIX, "clean", "{out}"], inputs, expected_shapes={"cells/*.npy": (n, k)},
           prepare=copier(base), window=(0.1, 0.95))
    if "export-onnx" in names and have("labelfix.cli.export_onnx") and trained.exists():
        go("export-onnx", [*LABELFIX, "export", "onnx", "{out}/run", "--out", "{out}/model.onnx"],
           ["{out}/run/checkpoints", "{out}/run/labels.npy"], prepare=copier(trained, "run"), window=(0.1, 0.95))
    if "export-coco" in names and have("labelfix.cli.export_coco") and have("labelfix.cli.clean") and trained.exists():
        cleaned = work / "cleaned-run"
        shutil.copytree(trained, cleaned)
        run_ok([*LABELFIX, "clean", str(cleaned), "--no-report"])
        go("export-coco", [*LABELFIX, "export", "coco", "{out}/run", "--out", "{out}/cleaned.json", "--from", "csv",
                           "--decisions", "all", "--overwrite"],
           [coco, "{out}/run/corrections.csv", "{out}/run/labels.npy"], prepare=copier(cleaned, "run"),
           window=(0.1, 0.95))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="killed runs per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", nargs="*", choices=COMMANDS, default=list(COMMANDS))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    ap.add_argument("--merge", action="store_true",
                    help="replace only these commands' entries in an existing results file")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="labelfix-kill-")) if args.keep is None else args.keep
    try:
        res = campaigns(work, args.commands, args.kills, args.seed)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.merge and args.results.exists():
        done = {r["command"] for r in res}
        res = [r for r in json.loads(args.results.read_text())["commands"] if r["command"] not in done] + res
        res.sort(key=lambda r: COMMANDS.index(r["command"]))
    out = {"description": "random SIGKILLs of labelfix commands (labelfix.bench.killtest); a run counts as a "
                          "kill when the command had not finished at the kill time",
           "kills_per_command": args.kills, "seed": args.seed, "python": platform.python_version(),
           "cpus": os.cpu_count(), "commands": res,
           "totals": {k: sum(r[k] for r in res) for k in ("runs", "kills", "corrupted_files", "inputs_changed",
                                                           "reruns_failed", "leftover_temps")}}
    from labelfix.io.atomic import write_json

    write_json(args.results, out)
    return out


if __name__ == "__main__":
    main()
