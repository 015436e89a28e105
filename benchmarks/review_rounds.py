"""Review rounds: do two rounds of train -> clean -> review fix more errors per reviewer
decision than one round with the same number of decisions? (docs/product.md, "Review loop")

For each seed: ``labelfix demo`` with two rounds (mislabel 40 %, 1,200 images; each round a
simulated reviewer decides the top ``--budget`` suggestions, ``--batch`` at a time, with
``labelfix clean`` re-ranking between batches; round 2 trains on round 1's cleaned labels).
Then one round with the same number of decisions: a copy of round 1's run, whose reviewer
goes on to decide 2 x ``--budget`` suggestions the same way (no retraining). Every accepted
suggestion fixes one label error (the reviewer answers with the true labels), so the share of
decisions accepted is the errors fixed per decision, the inverse of the reviewer's time per
fixed error. Also reported: the label errors left after each flow.

Run: ``python benchmarks/review_rounds.py [--seeds 0,1,2] [--budget 300] [--batch 100]
[--later-epochs N] [--work DIR] [--name review_rounds]``. Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import write_results  # noqa: E402  (benchmarks/report.py)


def review_more(run: Path, truth, total: int, batch: int) -> int:
    """Let the simulated reviewer of ``labelfix demo`` decide suggestions of ``run``,
    ``batch`` at a time with ``labelfix clean`` before each batch, until ``total`` are decided;
    returns the number decided."""
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.demo import simulate_reviewer
    from labelfix.run import load_run

    def decided() -> int:
        accept = load_run(run).corrections().get("accept")
        return 0 if accept is None else int((accept.fillna("").astype(str).str.strip() != "").sum())

    while (done := decided()) < total:
        clean_run(run, report=False)
        if not len(simulate_reviewer(run, truth, budget=min(batch, total - done))):
            break
    return decided()


def one_seed(work: Path, seed: int, budget: int, batch: int, later_epochs: int | None = None) -> dict:
    from labelfix.bench.metrics import error_cells
    from labelfix.demo import run_demo
    from labelfix.export.coco import export_cleaned_coco
    from labelfix.io import read_labels
    from labelfix.run import load_run

    out = work / f"seed{seed}"
    t0 = time.perf_counter()
    res = run_demo(out, seed=seed, rounds=2, fiftyone=False, review_budget=budget, review_batch=batch,
                   later_epochs=later_epochs,
                   log=lambda s: print(f"  seed {seed}: {s.strip()}", file=sys.stderr, flush=True))
    demo_seconds = time.perf_counter() - t0
    truth = read_labels(out / "data" / "train.json")
    one = out / "one_round"
    shutil.copytree(out / "run1", one)   # its corrections.csv holds round 1's decisions
    decided = review_more(one, truth, 2 * budget, batch)
    accepted = int((load_run(one).corrections()["accept"].astype(str).str.strip() == "yes").sum())
    cleaned = out / "cleaned_one_round.json"
    export_cleaned_coco(one, cleaned, decisions="accepted", source="csv")
    rounds = res["rounds"]
    return {
        "seed": seed, "errors_before": res["errors_before"],
        "two_rounds_decided": int(sum(r["reviewed"] for r in rounds)),
        "two_rounds_accepted": int(sum(r["accepted"] for r in rounds)),
        "round1_accepted": int(rounds[0]["accepted"]), "round2_accepted": int(rounds[1]["accepted"]),
        "two_rounds_errors_after": res["errors_after"],
        "one_round_decided": decided, "one_round_accepted": accepted,
        "one_round_errors_after": int(error_cells(read_labels(cleaned).labels, truth.labels).sum()),
        "demo_seconds": demo_seconds,
    }


def summarise(frame: pd.DataFrame, budget: int, batch: int, command: str, seconds: float) -> str:
    """The Markdown table of :func:`main`'s rows (one per seed)."""
    lines = ["| seed | label errors | two rounds: fixed (round 1 + round 2) / decisions | errors left | "
             "one round: fixed / decisions | errors left |", "|---|---|---|---|---|---|"]
    per = {}
    for r in frame.to_dict("records"):
        for flow in ("two_rounds", "one_round"):
            per.setdefault(flow, []).append(r[f"{flow}_accepted"] / r[f"{flow}_decided"])
        lines.append(f"| {r['seed']} | {r['errors_before']} | {r['two_rounds_accepted']} ({r['round1_accepted']} + "
                     f"{r['round2_accepted']}) / {r['two_rounds_decided']} = {per['two_rounds'][-1]:.3f} | "
                     f"{r['two_rounds_errors_after']} | {r['one_round_accepted']} / {r['one_round_decided']} = "
                     f"{per['one_round'][-1]:.3f} | {r['one_round_errors_after']} |")
    two, one = np.mean(per["two_rounds"]), np.mean(per["one_round"])
    return (f"# Review rounds: errors fixed per reviewer decision\n\n`labelfix demo` (mislabel 40 %), two rounds "
            f"of {budget} decisions ({batch} at a time, re-ranked between batches; round 2 retrained on "
            f"round 1's cleaned labels) against one round of {2 * budget} decisions on round 1's run (the same "
            f"reviewer, no retraining). Each accepted suggestion fixes one label error.\n\n" + "\n".join(lines)
            + f"\n\nMean errors fixed per decision: two rounds {two:.3f}, one round {one:.3f} (ratio "
            f"{two / one:.2f}); the reviewer's time per fixed error is the inverse.\n\nCommand: `{command}` "
            f"({seconds:.0f} s on this machine).\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=300, help="decisions per round (the demo's review budget)")
    ap.add_argument("--batch", type=int, default=100, help="decisions between two re-rankings")
    ap.add_argument("--work", default=None, help="folder for the demo runs (default: a temporary one)")
    ap.add_argument("--name", default="review_rounds")
    ap.add_argument("--later-epochs", type=int, default=None,
                    help="round 2's epochs per fold model (default: the demo's, labelfix.demo.DEMO_LATER_EPOCHS)")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: {args.seeds!r}: expected comma-separated integers") from None
    if not seeds or args.budget < 1 or args.batch < 1 or (args.later_epochs is not None and args.later_epochs < 1):
        raise SystemExit("--seeds needs at least one seed; --budget, --batch and --later-epochs must be at least 1")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="review_rounds_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        rows = [one_seed(work, s, args.budget, args.batch, args.later_epochs) for s in seeds]
    frame = pd.DataFrame(rows)
    command = f"python benchmarks/review_rounds.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    write_results(args.name, frame, summarise(frame, args.budget, args.batch, command, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
