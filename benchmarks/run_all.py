"""Run every benchmark with its defaults, one after the other (``make bench``).

Each script writes its own results file under ``benchmarks/results/`` (docs/ quotes
them); this runner only sequences them and prints each one's wall time. Not included:
``gpu_check`` (needs CUDA) and ``labelfix bench`` itself (docs/benchmarks.md).

Run: ``python benchmarks/run_all.py [--only NAME ...] [--skip NAME ...]`` with NAME from
the list below; the exit status is that of the first benchmark that failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

#: name -> command-line arguments of one benchmark run, in running order
BENCHMARKS = {
    "train_overhead": ["train_overhead.py"],
    "cpu_channels_last": ["cpu_channels_last.py"],
    "gmm_fit": ["gmm_fit.py"],
    "api_vs_cleanlab": ["api_vs_cleanlab.py"],
    "onnx_throughput": ["onnx_throughput.py"],
    "detection": ["detection.py"],
    "folds_sweep": ["folds_sweep.py"],
    "review_rounds": ["review_rounds.py"],
    "mix_vs_bce_pretrained": ["mix_vs_bce.py", "--init", "pretrained"],
    "mix_vs_bce_random": ["mix_vs_bce.py", "--init", "random", "--seeds", "0", "--draws", "0"],
    "frozen_scale": ["frozen_scale.py"],
    "kill_harness": ["kill_harness.py"],
    "scale": ["scale.py"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    ap.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="leave these out")
    args = ap.parse_args()
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    if not names:
        ap.error("--only / --skip leave no benchmark to run")
    for name in names:
        script, *rest = BENCHMARKS[name]
        cmd = [sys.executable, str(HERE / script), *rest]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
