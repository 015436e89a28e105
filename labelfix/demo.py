"""The end-to-end demo: every step of labelfix on the bundled digit-mosaic dataset.

``labelfix demo`` (and ``make demo``) runs it: generate the data, inject noise, and then
two review rounds: train (cross-fitted), clean, let a simulated reviewer decide the top
suggestions, export the cleaned COCO (which records the verified cells), train again on
it. Then it exports ONNX and predicts the clean test split with onnxruntime. Because the
demo knows the true labels, it reports the label errors after every round. The reviewer
is simulated: it checks the top suggestions against the true labels and writes its
decisions into the ``accept`` column of corrections.csv, as a person editing the file
would; the last round's suggestions are also loaded into FiftyOne.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd


def _errors(labels: np.ndarray, truth: np.ndarray) -> int:
    """Cells a perfect cleaner would change (labelfix.bench.metrics.error_cells)."""
    from labelfix.bench.metrics import error_cells

    return int(error_cells(labels, truth).sum())


MARKER = ".labelfix-demo"


def _fresh_folder(out: Path) -> Path:
    """An empty ``out`` for the demo. A folder left by an earlier demo (it carries the
    marker file) is replaced; any other non-empty folder is refused, never deleted."""
    import shutil

    from labelfix.errors import LabelfixError

    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise LabelfixError(f"{out}: exists and is not a labelfix demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by labelfix demo; `labelfix demo` replaces this folder\n")
    return out


def simulate_reviewer(run_dir: Path, truth, budget: int):
    """Stand in for a person: look at the ``budget`` highest-scoring suggestions of
    ``corrections.csv`` not decided yet, accept those that agree with the true labels,
    reject the rest, and write the decisions to its ``accept`` column (the CSV review
    workflow of docs/review.md). Returns the rows decided now."""
    from labelfix.io import atomic
    from labelfix.run import load_run

    corr = load_run(run_dir).corrections()
    rows = truth.image_rows().loc[corr["image_id"]].to_numpy()
    cols = truth.class_columns().loc[corr["category_id"]].to_numpy()
    right = np.asarray(truth.labels)[rows, cols] == corr["suggested"].to_numpy()
    before = (corr["accept"].fillna("").astype(str).str.strip().to_numpy() if "accept" in corr.columns
              else np.full(len(corr), "", dtype=object))
    open_rows = np.flatnonzero(before == "")[:budget]
    now = np.zeros(len(corr), dtype=bool)
    now[open_rows] = True
    corr["accept"] = np.where(now, np.where(right, "yes", "no"), before)
    atomic.write_csv(run_dir / "corrections.csv", corr)
    out = corr[now].copy()
    out["accept"] = right[now]
    return out


#: the demo's training: cross-fitted masked BCE (4 folds x 2 rounds x 14 epochs) of a small
#: CNN from random initialisation on the 48 px digit mosaics, two fold models at a time
#: (``--fold-workers 2``: 1.6x the throughput of one two-thread process for this model on
#: 2 cores). 4 folds x 14 epochs ranked the errors better than 3 x 20 on seeds 0, 1 and 2
#: (benchmarks/folds_sweep.py, docs/user_guide.md). channels_last makes this model's CPU
#: epochs 1.4x faster (benchmarks/cpu_channels_last.py). The class-prior bias (``--prior-bias``)
#: lets the small model learn the rare digits: error AP 0.554 / 0.519 / 0.545 -> 0.634 / 0.572
#: / 0.582 on seeds 0 / 1 / 2 (benchmarks/results/prior_bias.md, docs/training.md). The demo's
#: score (``evidence``) does not read the loss over the epochs, so its fold models skip the
#: per-epoch pass over their held-out images (``--no-dynamics``: 13 of 14 passes, about 13 s of
#: the demo on 2 cores; the same suggestions).
DEMO_TRAIN = dict(backbone="test_resnet", img_size=48, batch_size=32, lr=1e-2, warmup_epochs=0.5, mix="none",
                  folds=4, rounds=2, hflip=0.0, randaugment=False, workers=0, device="cpu", ema=False,
                  progress=False, channels_last=True, prior_bias=True, dynamics=False,
                  fold_workers=2 if (os.cpu_count() or 1) >= 2 else 1)
DEMO_EPOCHS = 14
#: review rounds 2 and later train their fold models this many epochs (at most ``epochs``):
#: their labels are round 1's cleaned file, with fewer errors and 300 verified cells, and
#: a shorter schedule memorises less of what is left. Chosen on seed 0 (round 2's top 300:
#: 238 right with 14 epochs, 258 with 10), reported on seeds 1 / 2 (253 -> 263 / 253 -> 245);
#: about 15 s less of the demo on 2 cores (back to back: 159 s -> 144 s, docs/user_guide.md)
DEMO_LATER_EPOCHS = 10


#: the demo shows a fold model's epochs 1, every 5th and the last (not all 14: 8 fold models
#: per review round gave 224 lines), and an embedding's start and end, not its partial counts
DEMO_EPOCH_EVERY = 5
_EPOCH_LINE = re.compile(r": epoch (\d+) ")
_EMBEDDED_LINE = re.compile(r"embedded (\d+)/(\d+)")


def progress_lines(log: Callable[[str], None], epochs: int) -> Callable[[str], None]:
    """The demo's filter of training lines (:data:`DEMO_EPOCH_EVERY`), indented under the
    round's own lines."""
    def say(msg: str) -> None:
        m = _EPOCH_LINE.search(msg)
        if m and int(m.group(1)) not in (1, epochs) and int(m.group(1)) % DEMO_EPOCH_EVERY:
            return
        part = _EMBEDDED_LINE.search(msg)
        if part and part.group(1) != part.group(2):
            return
        log(f"      {msg}")

    return say


def _train_round(data: Path, run: Path, epochs: int, folds: int, seed: int, log: Callable[[str], None],
                 pool=None) -> dict:
    """``labelfix train`` of one review round (its lines through :func:`progress_lines`);
    ``pool``: the demo's fold pool, shared by its rounds."""
    from labelfix.train.config import TrainConfig
    from labelfix.train.api import train

    cfg = TrainConfig(data=str(data), out=str(run), epochs=epochs, seed=seed, **dict(DEMO_TRAIN, folds=folds))
    return train(cfg.validate(), log=progress_lines(log, epochs), fold_pool=pool)


def _fold_pool(folds: int):
    """The fold-training processes of every review round (``DEMO_TRAIN['fold_workers']`` >
    1), started now so that they import torch while the demo makes its data; else None.
    One pool for all rounds saves each round's process start (about 7 s on 2 cores)."""
    from labelfix.train.foldpool import FoldPool

    workers = DEMO_TRAIN["fold_workers"]
    return FoldPool(workers, folds).start() if workers > 1 and folds >= 2 else None


def _import_exporter() -> None:
    """The export process's first task: import torch's ONNX exporter and onnxruntime (its
    parity check); ``predict`` runs in the demo's own process."""
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401

    import labelfix.export.onnx  # noqa: F401


def _export_process():
    """One ``spawn`` process for the demo's ONNX export, started now so that it imports
    the exporter while the demo trains; the export of the last round's model then runs
    in it beside that round's clean, review and FiftyOne dataset (both take several
    seconds of one core)."""
    import concurrent.futures
    import multiprocessing as mp

    exporter = concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    exporter.submit(_import_exporter)
    return exporter


def run_demo(
    out: str | Path,
    *,
    noise: str = "mislabel",
    rate: float | None = 0.4,
    seed: int = 0,
    epochs: int = DEMO_EPOCHS,
    later_epochs: int | None = None,
    folds: int = DEMO_TRAIN["folds"],
    rounds: int = 2,
    fiftyone: bool = True,
    review_budget: int = 300,
    review_batch: int = 100,
    n_train: int = 1200,
    n_test: int = 400,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the whole flow into ``out`` with ``rounds`` review rounds; returns a dict of the
    key numbers (``n_train`` / ``n_test`` shrink the data for quick checks;
    ``review_budget`` is how many of the top suggestions the simulated reviewer looks at
    in each round, ``review_batch`` how many at a time, with ``labelfix clean`` between
    batches so that the next batch is ranked with what the reviewer decided (docs/review.md);
    ``epochs``: round 1's training epochs; ``later_epochs`` those of rounds 2 and later
    (default: :data:`DEMO_LATER_EPOCHS`, or ``epochs`` when that is smaller);
    ``folds``: cross-fitting folds of each round's training; ``fiftyone=False`` skips the
    last round's FiftyOne dataset, not the simulated reviewer).

    Each round trains on the current labels (round 1: the noisy file; round r: the
    cleaned file of round r - 1, whose verified cells are trusted), cleans, lets the
    simulated reviewer decide the top suggestions and exports the cleaned COCO."""
    from labelfix.errors import LabelfixError
    from labelfix.validation import check_number

    check_number(seed, "seed", integer=True, low=0)   # before the folder is made
    check_number(epochs, "epochs", integer=True, low=1)
    if later_epochs is not None and rounds == 1:
        raise LabelfixError("later_epochs: one review round trains `epochs` only")
    later_epochs = min(epochs, DEMO_LATER_EPOCHS) if later_epochs is None else later_epochs
    check_number(later_epochs, "later_epochs", integer=True, low=1)
    out = _fresh_folder(Path(out))
    t0 = time.perf_counter()
    pool = _fold_pool(folds)
    exporter = _export_process()
    try:
        return _run_flow(out, t0, pool, exporter, noise=noise, rate=rate, seed=seed,
                         epochs=[epochs] + [later_epochs] * (rounds - 1), folds=folds,
                         rounds=rounds, fiftyone=fiftyone, review_budget=review_budget, review_batch=review_batch,
                         n_train=n_train, n_test=n_test, log=log)
    finally:
        exporter.shutdown(cancel_futures=True)
        if pool is not None:
            pool.close()


def _run_flow(out: Path, t0: float, pool, exporter, *, noise, rate, seed, epochs, folds, rounds, fiftyone,
              review_budget, review_batch, n_train, n_test, log) -> dict:
    """The body of :func:`run_demo` (its arguments; ``epochs``: one per review round),
    training in ``pool``, which it closes
    after the last round's training, and exporting in ``exporter`` (:func:`_export_process`)."""
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.data.demo import make_demo
    from labelfix.data.noise import write_noisy_coco
    from labelfix.export.coco import export_cleaned_coco
    from labelfix.export.onnx import export_run
    from labelfix.export.predict import predict
    from labelfix.info import dataset_info
    from labelfix.io import read_labels

    paths = make_demo(out / "data", n_train=n_train, n_test=n_test, seed=seed)
    clean = read_labels(paths["train"])
    noisy_path, _, changes = write_noisy_coco(
        clean, noise, None if noise == "single-positive" else rate, seed, out / "data" / f"train_{noise}.json"
    )
    noisy = read_labels(noisy_path)
    truth = np.asarray(clean.labels)
    s = dataset_info(noisy).to_dict()
    errors = [_errors(np.asarray(noisy.labels), truth)]
    log(f"[data] {s['num_images']} train images, {s['num_classes']} classes, CLS_Imb {s['cls_imb']:.1f}; "
        f"{noise} noise changed {len(changes)} cells ({errors[0]} label errors) -> {noisy_path}")

    current, rows = noisy_path, []
    for r in range(1, rounds + 1):
        run = out / f"run{r}" if rounds > 1 else out / "run"
        tr = time.perf_counter()
        log(f"[round {r}/{rounds}] train {DEMO_TRAIN['backbone']} on {current.name}, {folds} folds x "
            f"{DEMO_TRAIN['rounds']} cross-fitting rounds x {epochs[r - 1]} epochs"
            + (f", {DEMO_TRAIN['fold_workers']} fold models at a time" if DEMO_TRAIN["fold_workers"] > 1 else ""))
        if fiftyone and r == rounds:   # FiftyOne's database starts while this round trains
            from labelfix.review.dataset import start_database

            database = start_database()
        _train_round(current, run, epochs[r - 1], folds, seed, log, pool)
        if r == rounds:
            export = exporter.submit(export_run, run, out / "model.onnx")   # beside clean and review
            if pool is not None:
                pool.close()   # idle from here on: give its memory back
        cleaned = clean_run(run)
        c = cleaned.corrections
        verified, again = verified_suggested(run, c)
        log(f"[round {r}/{rounds}] clean: {len(c)} suggestions ({int((c['action'] == 'add').sum())} add, "
            f"{int((c['action'] == 'remove').sum())} remove; {verified} verified cells in the labels, {again} of "
            f"them suggested) -> {run / 'corrections.csv'}, report {cleaned.report}")
        batches = []
        while sum(len(b) for b in batches) < review_budget:
            if batches:   # re-rank what is left with the decisions so far
                clean_run(run, report=False)
            batch = simulate_reviewer(run, clean, budget=min(review_batch, review_budget - sum(map(len, batches))))
            if not len(batch):
                break
            batches.append(batch)
            log(f"[round {r}/{rounds}] review batch {len(batches)}: {int(batch['accept'].sum())} of {len(batch)} "
                f"right" + (", ranked after learning from the decisions before it" if len(batches) > 1 else ""))
        decided = pd.concat(batches) if batches else pd.DataFrame({"accept": []})
        accepted = int(decided["accept"].sum())
        if fiftyone and r == rounds:
            from labelfix.review.dataset import build_review_dataset

            database.join()
            _, summary = build_review_dataset(run)
            log(f"[round {r}/{rounds}] review: FiftyOne dataset '{summary.name}' with {summary.suggestions} "
                f"suggestions; open it with `labelfix review {run} --launch`")
        target = out / (f"cleaned_round{r}.json" if r < rounds else "cleaned.json")
        exp = export_cleaned_coco(run, target, decisions="accepted", source="csv")
        errors.append(_errors(np.asarray(read_labels(target).labels), truth))
        rows.append({"round": r, "reviewed": len(decided), "accepted": accepted, "errors": errors[-1],
                     "verified": verified, "verified_suggested": again, "seconds": time.perf_counter() - tr})
        log(f"[round {r}/{rounds}] a simulated reviewer checked the top {len(decided)} suggestions against the true "
            f"labels, {review_batch} at a time: {accepted} right (accepted), {len(decided) - accepted} wrong (rejected), precision "
            f"{accepted / max(len(decided), 1):.2f}; export coco -> {target} ({exp.changes} changes, "
            f"{exp.verified} verified cells); label errors {errors[-2]} -> {errors[-1]} "
            f"({time.perf_counter() - tr:.0f}s)")
        current = target

    model = export.result()
    test_images = sorted(paths["images"].glob("test_*.png"))[:64]
    preds = predict(model, test_images, batch_size=32, progress=False)
    log(f"[export] onnx -> {model}; predicted {len(preds)} test images with onnxruntime "
        f"(first: {preds.iloc[0]['file']} -> {preds.iloc[0]['labels'] or '(none)'})")
    log(f"done in {time.perf_counter() - t0:.0f}s: label errors " + " -> ".join(str(e) for e in errors))
    return {
        "errors": errors, "errors_before": errors[0], "errors_after": errors[-1], "rounds": rows,
        "suggestions": len(c), "run": run, "accepted": rows[-1]["accepted"], "cleaned": current, "model": model,
        "predictions": preds,
    }


def verified_suggested(run: Path, corrections) -> tuple[int, int]:
    """(cells of the run's labels a person verified, how many of them ``corrections``
    suggests changing): the second number must be 0."""
    from labelfix.run import load_run

    ls = load_run(run).labelset
    trusted = ls.trusted()
    rows = ls.image_rows().loc[corrections["image_id"]].to_numpy()
    cols = ls.class_columns().loc[corrections["category_id"]].to_numpy()
    return int(trusted.sum()), int(trusted[rows, cols].sum())
