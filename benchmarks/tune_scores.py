# Choice of labelfix's default issue score (docs/cleaning.md "Issue scores"): the
# registered scoring rules of labelfix.cleaning.scores (BalanceMix GMM posterior, Song,
# Kim & Lee, AAAI 2024; confident-learning self-confidence, Northcutt et al., JAIR 2021)
# and convex combinations of two of them, compared by per-cell average precision.
"""Tune the issue score on the runs of a finished ``labelfix bench``.

Protocol (no metric is reported on the data it was tuned on):

1. **tuning split** = seed ``--tune-seed`` (default 0) of every noise setting. Every
   candidate is scored there by per-cell AP (labelfix.bench.metrics); the candidate
   with the highest mean AP over the noise settings is chosen.
2. **evaluation split** = every other seed. The chosen candidate, the current
   ``DEFAULT_SCORER`` and every registered rule are evaluated there; only these numbers
   are held-out.
3. The default should change only on a **clear win** on the evaluation split: mean AP
   over the noise settings higher than the current default's by at least
   ``--min-gain`` (0.01) and no noise setting worse by more than ``--max-loss`` (0.005).

Candidates: every registered scorer, plus ``w * A + (1 - w) * B`` for each pair of
registered scorers and w in {0.25, 0.5, 0.75} (the known-cell scores mix; unknown cells
get the same estimate from every rule). The statistics are those ``labelfix clean``
reads from the detection run of each setting (``runner.detection_source``).

Usage::

    .venv/bin/python benchmarks/tune_scores.py BENCH_DIR [--out benchmarks/results/score_tuning.json]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from labelfix.bench.metrics import detection_metrics
from labelfix.bench.runner import detection_source, parse_noise
from labelfix.cleaning import scores as S
from labelfix.cleaning.api import find_label_issues
from labelfix.io import atomic
from labelfix.io import read_labels
from labelfix.run import Run

WEIGHTS = (0.25, 0.5, 0.75)


def run_inputs(run_dir: Path) -> dict:
    """The per-cell inputs ``labelfix clean`` uses, as in-memory arrays."""
    run = Run(run_dir)
    logits = np.asarray(run.stat("logits"), dtype=np.float32)
    out = {"given": np.asarray(run.labelset.labels), "probs": S.sigmoid(logits)}
    losses = run.stat("loss_mean", required=False)
    two_view = run.stat("two_view", required=False)
    role = run.stat("role_logits", required=False)
    out["losses"] = None if losses is None else np.asarray(losses, dtype=np.float32)
    out["two_view"] = None if two_view is None else np.asarray(two_view, dtype=np.float32)
    out["estimates"] = None if role is None else S.sigmoid(np.asarray(role, dtype=np.float32))
    return out


def candidate_scores(inp: dict) -> dict[str, np.ndarray]:
    """Every candidate's (N, K) score on one run's inputs."""
    issues = find_label_issues(inp["given"], inp["probs"], losses=inp["losses"], two_view=inp["two_view"],
                               estimates=inp["estimates"])
    kw = dict(probs=inp["probs"], p_clean=np.asarray(issues.p_clean), two_view=inp["two_view"],
              losses=inp["losses"] if inp["losses"] is not None else S.bce_losses(inp["probs"], inp["given"]),
              estimates=inp["estimates"])
    base = {name: S.get_scorer(name)(inp["given"], **kw) for name in S.list_scorers()}
    out = dict(base)
    for a, b in itertools.combinations(sorted(base), 2):
        for w in WEIGHTS:
            out[f"{w:g}*{a}+{1 - w:g}*{b}"] = (w * base[a] + (1 - w) * base[b]).astype(np.float32)
    return out


def settings(bench: Path) -> dict[str, dict[int, Path]]:
    """noise tag -> {seed: detection run dir} found under ``bench/runs``."""
    out: dict[str, dict[int, Path]] = {}
    for noise_dir in sorted((bench / "runs").iterdir()):
        tag = noise_dir.name.replace("_", ":", 1) if noise_dir.name != "single-positive" else noise_dir.name
        kind, _ = parse_noise(tag)
        for seed_dir in sorted(noise_dir.glob("seed*")):
            trained = [p.name for p in seed_dir.iterdir() if (p / "stats" / "logits.npy").exists()]
            src = detection_source(kind, trained)
            if src is not None:
                out.setdefault(tag, {})[int(seed_dir.name[4:])] = seed_dir / src
    return out


def evaluate(bench: Path, true: np.ndarray, runs: dict[str, dict[int, Path]], seeds_of) -> dict:
    """{candidate: {noise: mean AP over the selected seeds}}."""
    acc: dict[str, dict[str, list]] = {}
    for tag, by_seed in runs.items():
        for seed, run_dir in sorted(by_seed.items()):
            if not seeds_of(seed):
                continue
            inp = run_inputs(run_dir)
            for name, score in candidate_scores(inp).items():
                ap = detection_metrics(inp["given"], true, score)["ap"]
                acc.setdefault(name, {}).setdefault(tag, []).append(ap)
    return {name: {tag: float(np.mean(v)) for tag, v in per.items()} for name, per in acc.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", type=Path, help="output folder of a finished labelfix bench")
    ap.add_argument("--data", type=Path, default=None, help="clean training labels (default: BENCH/data/train.json)")
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--min-gain", type=float, default=0.01)
    ap.add_argument("--max-loss", type=float, default=0.005)
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. which bench this was)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_tuning.json")
    args = ap.parse_args(argv)

    true = np.asarray(read_labels(args.data or args.bench / "data" / "train.json").labels)
    runs = settings(args.bench)
    seeds = sorted({s for by in runs.values() for s in by})
    if args.tune_seed not in seeds or len(seeds) < 2:
        print(f"need seed {args.tune_seed} and at least one other seed under {args.bench}/runs (found {seeds})",
              file=sys.stderr)
        return 2
    tuning = evaluate(args.bench, true, runs, lambda s: s == args.tune_seed)
    mean_tune = {n: float(np.mean(list(v.values()))) for n, v in tuning.items()}
    chosen = max(sorted(mean_tune), key=lambda n: mean_tune[n])
    held = evaluate(args.bench, true, runs, lambda s: s != args.tune_seed)
    mean_held = {n: float(np.mean(list(v.values()))) for n, v in held.items()}
    default = S.DEFAULT_SCORER
    gain = mean_held[chosen] - mean_held[default]
    worst = min(held[chosen][t] - held[default][t] for t in held[chosen])
    clear = chosen != default and gain >= args.min_gain and worst >= -args.max_loss
    result = {
        "bench": str(args.bench),
        "note": args.note,
        "tuning_seed": args.tune_seed,
        "evaluation_seeds": [s for s in seeds if s != args.tune_seed],
        "metric": "per-cell average precision of the issue score (labelfix.bench.metrics)",
        "detection_runs": {t: {str(s): str(p.relative_to(args.bench)) for s, p in by.items()}
                           for t, by in runs.items()},
        "tuning": {"per_noise": tuning, "mean": mean_tune, "chosen": chosen},
        "evaluation": {"per_noise": {n: held[n] for n in sorted({chosen, default, *S.list_scorers()})},
                       "mean": {n: mean_held[n] for n in sorted({chosen, default, *S.list_scorers()})}},
        "default_before": default,
        "gain_over_default": gain,
        "worst_noise_difference": worst,
        "clear_win": bool(clear),
        "rule": f"change only if held-out mean AP gain >= {args.min_gain} and no noise setting worse by more "
                f"than {args.max_loss}",
        "recommendation": chosen if clear else default,
    }
    atomic.write_json(args.out, result)
    print(f"chosen on seed {args.tune_seed}: {chosen} (tuning mean AP {mean_tune[chosen]:.4f})")
    print(f"held-out mean AP: chosen {mean_held[chosen]:.4f}, default {default} {mean_held[default]:.4f} "
          f"(gain {gain:+.4f}, worst noise {worst:+.4f}) -> {'clear win' if clear else 'keep the default'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
