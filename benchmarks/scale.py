"""Scale benchmark: labelfix on a synthetic 1,000,000-image x 1,000-class dataset.

Writes (under --root, default /tmp/labelfix-scale; deleted afterwards unless --keep):
- RUN/: a labelfix run directory (labelfix.bench.synthetic.make_synthetic_run):
  labels.npy int8 (~1 GB), stats/logits.npy float16 (~2 GB), stats/loss_mean.npy
  float32 (~4 GB); its source.json points at the COCO file below, as if it had been
  trained on it;
- labels.json: the same labels as an LVIS-style COCO JSON (~3 positives and ~5 verified
  negatives per image, the rest unknown).
Then measures wall time and peak resident memory (``/usr/bin/time -v``, "Maximum
resident set size") of each command in a fresh subprocess:
- ``labelfix info RUN --json --no-files`` and ``labelfix info labels.json --json --no-files``;
- ``labelfix clean RUN`` and ``labelfix export coco RUN --out ...`` when those commands
  exist in this checkout (checked by importing their modules).
Results are merged into benchmarks/results/scale.json (entries keyed by name and --tag,
so before / after figures of a change can sit side by side).

    .venv/bin/python benchmarks/scale.py                     # full size
    .venv/bin/python benchmarks/scale.py --n-images 20000 --n-classes 100 --tag smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"
# the CLI in this interpreter, whether or not the console script is installed
LABELFIX = [sys.executable, "-c", "import sys; from labelfix.cli import main; sys.argv[0] = 'labelfix'; main()"]


def _anon_kb(pid: int) -> int:
    """RssAnon of a process: its private memory, without the file-backed pages of
    memory-mapped arrays (which the kernel can drop or write back at any time)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _run_sampled(argv: list[str], timeout: float | None) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``argv`` and sample the peak RssAnon (MB) of its process tree every 50 ms."""
    import psutil

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            pids = [proc.pid] + [c.pid for c in parent.children(recursive=True)]
        except psutil.Error:
            pids = [proc.pid]
        peak = max(peak, sum(_anon_kb(p) for p in pids))
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), peak / 1024


def measure(cmd: list[str], timeout: float | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``; wall seconds, peak RSS (MB: everything
    resident, including the page cache of memory-mapped arrays), peak anonymous memory
    (MB: what the process itself holds, sampled from /proc), exit code and the last
    stderr line."""
    t0 = time.perf_counter()
    anon_mb = None
    if Path("/usr/bin/time").exists():
        proc, anon_mb = _run_sampled(["/usr/bin/time", "-v", *cmd], timeout)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss_mb = int(m.group(1)) / 1024 if m else None
        err = proc.stderr.split("\tCommand being timed")[0]
    else:  # fall back to the children's rusage of a one-child wrapper
        wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
        proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, timeout=timeout)
        lines = proc.stderr.strip().splitlines()
        rss_mb = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else None
        err = "\n".join(lines[:-1])
    wall = time.perf_counter() - t0
    tail = [ln for ln in err.strip().splitlines() if ln.strip()]
    shown = ["labelfix", *cmd[len(LABELFIX):]] if cmd[:len(LABELFIX)] == LABELFIX else cmd
    return {"command": " ".join(shown),
            "exit_code": proc.returncode, "wall_s": round(wall, 2),
            "max_rss_mb": round(rss_mb, 1) if rss_mb is not None else None,
            "peak_anon_mb": round(anon_mb, 1) if anon_mb is not None else None,
            "stderr_tail": tail[-1] if tail else ""}


def size_mb(path: Path) -> float:
    if path.is_file():
        return round(path.stat().st_size / 2**20, 1)
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def build(root: Path, n_images: int, n_classes: int, seed: int) -> tuple[Path, Path, dict]:
    """Write the run directory and the COCO JSON; return their paths and timings."""
    from labelfix.bench.synthetic import make_synthetic_run, write_synthetic_coco
    from labelfix.io import atomic
    from labelfix.labels import LabelSet

    run_dir, coco = root / "run", root / "labels.json"
    t0 = time.perf_counter()
    make_synthetic_run(run_dir, n_images, n_classes, seed)
    t_run = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_synthetic_coco(LabelSet.load(run_dir), coco)
    t_coco = time.perf_counter() - t0
    src = json.loads((run_dir / "source.json").read_text())
    src.update(path=str(coco.resolve()), format="coco", unlabeled="unknown", lvis=True)
    atomic.write_json(run_dir / "source.json", src)
    return run_dir, coco, {"make_run_s": round(t_run, 1), "write_coco_s": round(t_coco, 1)}


def has_command(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def bench_info(run_dir: Path, coco: Path) -> dict:
    return {
        "info_run": measure([*LABELFIX, "info", str(run_dir), "--json", "--no-files"]),
        "info_coco": measure([*LABELFIX, "info", str(coco), "--json", "--no-files"]),
    }


def bench_clean(run_dir: Path) -> dict:
    """``labelfix clean RUN`` (only when the command exists in this checkout)."""
    if not has_command("labelfix.cli.clean"):
        return {}
    return {"clean": measure([*LABELFIX, "clean", str(run_dir)])}


def bench_export_coco(run_dir: Path, out: Path) -> dict:
    """``labelfix export coco RUN --out OUT`` (only when the command exists; needs clean's
    corrections.csv)."""
    if not has_command("labelfix.cli.export_coco") or not (run_dir / "corrections.csv").exists():
        return {}
    return {"export_coco": measure([*LABELFIX, "export", "coco", str(run_dir), "--out", str(out)])}


def merge_results(entries: dict, meta: dict, tag: str, path: Path = RESULTS) -> dict:
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = [r for r in old.get("measurements", []) if not (r.get("tag") == tag and r.get("name") in entries)]
    rows += [{"name": name, "tag": tag, **rec} for name, rec in entries.items()]
    out = {"description": "peak RSS (/usr/bin/time -v; includes the reclaimable page cache of memory-mapped arrays), peak anonymous memory (sampled RssAnon) and wall time of labelfix commands on a synthetic dataset",
           "datasets": {**old.get("datasets", {}), tag: meta}, "measurements": rows}
    from labelfix.io.atomic import write_json

    write_json(path, out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=1_000_000)
    ap.add_argument("--n-classes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=Path("/tmp/labelfix-scale"))
    ap.add_argument("--tag", default="current", help="label of this set of measurements in scale.json")
    ap.add_argument("--reuse", action="store_true", help="reuse data already under --root")
    ap.add_argument("--keep", action="store_true", help="keep --root afterwards")
    ap.add_argument("--only", nargs="*", choices=["info", "clean", "export"], default=["info", "clean", "export"])
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    root = args.root
    meta = {"n_images": args.n_images, "n_classes": args.n_classes, "seed": args.seed,
            "python": platform.python_version(), "cpus": os.cpu_count()}
    if args.reuse and (root / "run" / "labels.npy").exists() and (root / "labels.json").exists():
        run_dir, coco = root / "run", root / "labels.json"
    else:
        shutil.rmtree(root, ignore_errors=True)
        run_dir, coco, timing = build(root, args.n_images, args.n_classes, args.seed)
        meta.update(timing)
    meta.update(run_dir_mb=size_mb(run_dir), coco_json_mb=size_mb(coco))
    entries: dict = {}
    try:
        if "info" in args.only:
            entries.update(bench_info(run_dir, coco))
        if "clean" in args.only:
            entries.update(bench_clean(run_dir))
        if "export" in args.only:
            entries.update(bench_export_coco(run_dir, root / "cleaned.json"))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    out = merge_results(entries, meta, args.tag, args.results)
    print(json.dumps({"dataset": meta, **entries}, indent=2))
    return out


if __name__ == "__main__":
    main()
