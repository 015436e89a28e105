"""BalanceMix re-labeling schedules: do the cheaper schedules make the paper's decisions?

The paper's Algorithm 1 (line 13) re-labels every mini-batch with the current model: c is
the mean probability of two augmented views (``--balancemix-refine batch``). The cheaper
schedules take c once per epoch: from two training views after the GMM fit (``epoch``,
one extra pass) or from the epoch's evaluation pass (``evaluation``, no extra pass).

One ``batch`` run of the mix_vs_bce budget (pretrained ``tf_efficientnet_lite0``, 64 px,
10 epochs, management from epoch 3) is probed: after every managed epoch the two cheaper
schedules' decisions are computed from the same model and GMM posteriors, and during
the next epoch every decision the per-batch re-labeling makes on a non-clean cell is
compared with them. Reported per schedule: agreement with the per-batch decision (state
and target), the same over the cells that either of the two re-labels, the 3 x 3 table, and how often each schedule's re-labeled
target equals the true (noise-free) label.

Clean-test mAP of all three schedules: ``benchmarks/mix_vs_bce.py``; cost per epoch:
``benchmarks/train_overhead.py``.

The mix_vs_bce budget trains without augmentation (a mirrored digit is another glyph),
so there the two views equal the evaluation view and ``epoch`` and ``evaluation`` decide
alike; ``--augment on`` adds RandAugment (labelfix's default for images), where the
views are random and differ from the evaluation transform.

Run: ``python benchmarks/balancemix_refine.py [--noises mislabel:0.4] [--seed 0] [--augment off,on]``
(results: ``benchmarks/results/balancemix_refine.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: decision of a non-clean cell: 0 = ambiguous (keeps its label, weight p_G), 1 = re-labeled
#: to 0, 2 = re-labeled to 1
DECISIONS = ("ambiguous", "relabel_to_0", "relabel_to_1")


def decisions(given, p_clean, c, threshold, delta):
    """int8 decision per cell (DECISIONS), -1 for clean cells."""
    from labelfix.cleaning.states import RELABELED, assign_states_block

    state, target, _ = assign_states_block(given, p_clean, c, clean_threshold=threshold, delta=delta)
    nonclean = np.nan_to_num(np.asarray(p_clean, np.float32), nan=1.0) <= threshold
    out = np.where(state == RELABELED, 1 + (target == 1), 0).astype(np.int8)
    return np.where(nonclean, out, np.int8(-1))


class Probe:
    """Training callback: records the per-batch decisions of a ``refine="batch"`` run and
    the decisions the cheaper schedules would make from the same epoch's model."""

    def __init__(self, true: np.ndarray):
        self.true = true
        self.pending: dict[str, np.ndarray] = {}   # schedule -> (N, K) decisions for the next epoch
        self.tables = {s: np.zeros((3, 3), np.int64) for s in ("epoch", "evaluation")}
        self.correct = {s: [0, 0] for s in ("batch", "epoch", "evaluation")}   # re-labels equal to truth, re-labels
        self.wrapped = False

    def _wrap(self, mixer):
        import labelfix.train.balancemix as bm

        original = bm.assign_states_block
        probe, current = self, {}

        def targets(batch, pos):
            current["idx"] = batch.indices[pos].numpy()
            return type(mixer)._targets(mixer, batch, pos)

        def recorded(given, p_clean, c, **kw):
            result = original(given, p_clean, c, **kw)
            if c is not None and probe.pending:
                probe._compare(current["idx"], decisions(given, p_clean, c, kw["clean_threshold"], kw["delta"]))
            return result

        mixer._targets = targets
        bm.assign_states_block = recorded

    def _compare(self, idx, made):
        cells = made >= 0
        truth = self.true[idx]
        for name, table in self.tables.items():
            other = self.pending[name][idx]
            np.add.at(table, (made[cells], other[cells]), 1)
        for name, d in [("batch", made)] + [(s, self.pending[s][idx]) for s in self.tables]:
            re = cells & (d >= 1)
            self.correct[name][0] += int(((d - 1) == truth)[re].sum())
            self.correct[name][1] += int(re.sum())

    def on_epoch_end(self, trainer, epoch, row):
        from labelfix.numeric import sigmoid

        mixer = trainer.mixer
        if not self.wrapped:
            self._wrap(mixer)
            self.wrapped = True
        if mixer.p_clean is None:
            self.pending = {}
            return
        rows = trainer.train_rows
        nonclean = mixer.p_clean[rows] <= mixer.clean_threshold
        logits = np.load(trainer.out / "stats" / "logits.npy").astype(np.float32)
        c_eval = np.full(mixer.assumed.shape, np.nan, np.float32)
        c_eval[rows] = np.where(nonclean, sigmoid(logits[rows]), np.nan)
        c_epoch = np.full(mixer.assumed.shape, np.nan, np.float32)
        todo = np.flatnonzero(nonclean.any(1))
        if todo.size:
            c_epoch[rows[todo]] = np.where(nonclean[todo], trainer.score_rows(None, rows[todo], views=2), np.nan)
        kw = dict(threshold=mixer.clean_threshold, delta=mixer.delta)
        self.pending = {"epoch": decisions(mixer.assumed, mixer.p_clean, c_epoch, **kw),
                        "evaluation": decisions(mixer.assumed, mixer.p_clean, c_eval, **kw)}


def run(noise: str, seed: int, work: Path, randaugment: bool = False) -> dict:
    from mix_vs_bce import budget

    from labelfix.bench.runner import parse_noise
    from labelfix.data.demo import make_demo
    from labelfix.data.noise import inject_noise
    from labelfix.io import read_labels
    from labelfix.labels import LabelSet
    from labelfix.train import TrainConfig, train

    data_dir = work / "data0"
    data = {"train": data_dir / "train.json"} if (data_dir / "train.json").exists() else make_demo(data_dir, seed=0)
    clean = read_labels(data["train"])
    true = np.asarray(clean.labels)
    labels = inject_noise(true, *parse_noise(noise), seed).labels
    folder = work / noise.replace(":", "_") / f"seed{seed}{'_randaugment' if randaugment else ''}"
    LabelSet(labels, clean.images, clean.classes, clean.image_root, dict(clean.source)).save(folder / "data")
    probe = Probe(true)
    t0 = time.perf_counter()
    train(TrainConfig(data=str(folder / "data"), out=str(folder / "run"), seed=seed, mix="balancemix",
                      balancemix_warmup=3, balancemix_refine="batch", **dict(budget("pretrained"), randaugment=randaugment)),
          callbacks=[probe], log=lambda s: None)
    row = {"noise": noise, "seed": seed, "randaugment": randaugment, "seconds": round(time.perf_counter() - t0, 1), "schedules": {}}
    for name, table in probe.tables.items():
        n = int(table.sum())
        either = n - int(table[0, 0])   # cells that one of the two re-labels
        row["schedules"][name] = {"agreement": float(np.trace(table) / max(n, 1)), "decisions": n,
                                  "relabel_agreement": float((table[1, 1] + table[2, 2]) / max(either, 1)),
                                  "table_batch_rows": table.tolist()}
    for name, (ok, n) in probe.correct.items():
        row["schedules"].setdefault(name, {})["relabels"] = n
        row["schedules"][name]["relabel_precision"] = ok / n if n else float("nan")
    return row


def summarise(rows: list[dict]) -> str:
    lines = ["# BalanceMix re-labeling schedules against the paper's per-batch re-labeling", "",
             "Decisions on non-clean cells during epochs 4-10 of a `--balancemix-refine batch` run; each cheaper",
             "schedule's decision comes from the same model and GMM posteriors at the end of the previous epoch.",
             "", "| noise | seed | RandAugment | schedule | agreement with per-batch | same re-label, of cells either re-labels | "
             "decisions compared | re-labels | re-labels equal to the true label |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name in ("batch", "epoch", "evaluation"):
            s = r["schedules"][name]
            agree = "-" if name == "batch" else f"{s['agreement']:.3f}"
            same = "-" if name == "batch" else f"{s['relabel_agreement']:.3f}"
            n = "-" if name == "batch" else str(s["decisions"])
            lines.append(f"| {r['noise']} | {r['seed']} | {'on' if r['randaugment'] else 'off'} | {name} | {agree} | {same} | {n} | {s['relabels']} | "
                         f"{s['relabel_precision']:.3f} |")
    lines += ["", "Rows: the per-batch decision; columns: the cheaper schedule's (" + ", ".join(DECISIONS) + ").", ""]
    for r in rows:
        for name in ("epoch", "evaluation"):
            t = r["schedules"][name]["table_batch_rows"]
            lines.append(f"- {r['noise']} seed {r['seed']}, RandAugment {'on' if r['randaugment'] else 'off'}, {name}: " + "; ".join(
                f"{DECISIONS[i]} -> [{', '.join(str(v) for v in t[i])}]" for i in range(3)))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from labelfix.io import atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noises", default="mislabel:0.4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment", default="off,on",
                    help="RandAugment in training (and so in the re-labeling views): off (the mix_vs_bce budget), on, or off,on")
    ap.add_argument("--work", default="/tmp/labelfix_balancemix_refine")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = HERE / "results" / "balancemix_refine.json"
    rows = []
    for noise in args.noises.split(","):
        for aug in args.augment.split(","):
            rows.append(run(noise, args.seed, Path(args.work), randaugment=aug == "on"))
            print(json.dumps(rows[-1]), flush=True)
            atomic.write_json(out, {"command": " ".join(["python", "benchmarks/balancemix_refine.py"] + sys.argv[1:]),
                                    "rows": rows})
            atomic.write_text(out.with_suffix(".md"), summarise(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
