"""The end-to-end demo: every step of labelfix on the bundled digit-mosaic dataset.

``labelfix demo`` (and ``make demo``) runs it: generate the data, inject noise, train a
small model with BalanceMix, clean, load the suggestions into FiftyOne, export the
cleaned COCO after a simulated review, export ONNX and
predict the clean test split with onnxruntime. Because the demo knows the true labels,
it reports how many label errors the cleaned file still has. The reviewer is simulated:
it checks the top suggestions against the true labels and writes its decisions into the
``accept`` column of corrections.csv, as a person editing the file would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np


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
    ``corrections.csv``, accept those that agree with the true labels, reject the rest,
    and write the decisions to its ``accept`` column (the CSV review workflow of
    docs/review.md). Returns the reviewed rows."""
    from labelfix.io import atomic
    from labelfix.run import load_run

    corr = load_run(run_dir).corrections()
    rows = truth.image_rows().loc[corr["image_id"]].to_numpy()
    cols = truth.class_columns().loc[corr["category_id"]].to_numpy()
    right = np.asarray(truth.labels)[rows, cols] == corr["suggested"].to_numpy()
    reviewed = np.arange(len(corr)) < budget
    corr["accept"] = np.where(reviewed, np.where(right, "yes", "no"), "")
    atomic.write_csv(run_dir / "corrections.csv", corr)
    out = corr[reviewed].copy()
    out["accept"] = right[reviewed]
    return out


def run_demo(
    out: str | Path,
    *,
    noise: str = "mislabel",
    rate: float | None = 0.4,
    seed: int = 0,
    epochs: int = 12,
    review: bool = True,
    review_budget: int = 300,
    n_train: int = 1200,
    n_test: int = 400,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the whole flow into ``out``; returns a dict of the key numbers
    (``n_train`` / ``n_test`` shrink the data for quick checks; ``review_budget`` is how
    many of the top suggestions the simulated reviewer looks at)."""
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.data.demo import make_demo
    from labelfix.data.noise import write_noisy_coco
    from labelfix.export.coco import export_cleaned_coco
    from labelfix.export.onnx import export_run
    from labelfix.export.predict import predict
    from labelfix.info import dataset_info
    from labelfix.io import read_labels
    from labelfix.train.config import TrainConfig
    from labelfix.train.engine import train

    out = _fresh_folder(Path(out))
    t0 = time.perf_counter()
    paths = make_demo(out / "data", n_train=n_train, n_test=n_test, seed=seed)
    clean = read_labels(paths["train"])
    noisy_path, _, changes = write_noisy_coco(
        clean, noise, None if noise == "single-positive" else rate, seed, out / "data" / f"train_{noise}.json"
    )
    noisy = read_labels(noisy_path)
    s = dataset_info(noisy).to_dict()
    log(f"[1/6] data: {s['num_images']} train images, {s['num_classes']} classes, CLS_Imb {s['cls_imb']:.1f}; "
        f"{noise} noise changed {len(changes)} cells -> {noisy_path}")

    run = out / "run"
    cfg = TrainConfig(
        data=str(noisy_path), out=str(run), val=str(paths["test"]), backbone="test_resnet", img_size=48,
        epochs=epochs, batch_size=64, lr=3e-3, mix="balancemix", balancemix_warmup=max(1, epochs // 3),
        warmup_epochs=1, hflip=0.0, workers=0, seed=seed, device="cpu", ema=False, progress=False,
    )
    result = train(cfg.validate(), log=lambda msg: None)
    last = result["metrics"][-1] if result.get("metrics") else {}
    log(f"[2/6] trained test_resnet with BalanceMix for {epochs} epochs -> {run} "
        f"(clean-test mAP {float(last.get('val_map', float('nan'))):.1f})")

    cleaned = clean_run(run)
    c = cleaned.corrections
    log(f"[3/6] clean: {len(c)} suggestions ({int((c['action'] == 'add').sum())} add, "
        f"{int((c['action'] == 'remove').sum())} remove) -> {run / 'corrections.csv'}, report {cleaned.report}")

    if review:
        from labelfix.review.dataset import build_review_dataset

        _, summary = build_review_dataset(run)
        log(f"[4/6] review: FiftyOne dataset '{summary.name}' with {summary.suggestions} suggestions; "
            f"open it with `labelfix review {run} --launch`")
    else:
        log("[4/6] review: skipped")

    truth = np.asarray(clean.labels)
    decided = simulate_reviewer(run, clean, budget=review_budget)
    accepted = int(decided["accept"].sum())
    cleaned_path = out / "cleaned.json"
    exp = export_cleaned_coco(run, cleaned_path, decisions="accepted", source="csv")
    before = _errors(np.asarray(noisy.labels), truth)
    after = _errors(np.asarray(read_labels(cleaned_path).labels), truth)
    log(f"[5/6] a simulated reviewer checked the top {len(decided)} suggestions against the true labels: "
        f"{accepted} right (accepted), {len(decided) - accepted} wrong (rejected), written to the accept column "
        f"of corrections.csv; export coco -> {cleaned_path} ({exp.changes} changes); "
        f"label errors {before} -> {after}")

    model = export_run(run, out / "model.onnx")
    test_images = sorted(paths["images"].glob("test_*.png"))[:64]
    preds = predict(model, test_images, batch_size=32, progress=False)
    log(f"[6/6] export onnx -> {model}; predicted {len(preds)} test images with onnxruntime "
        f"(first: {preds.iloc[0]['file']} -> {preds.iloc[0]['labels'] or '(none)'})")
    log(f"done in {time.perf_counter() - t0:.0f}s")
    return {
        "errors_before": before, "errors_after": after, "suggestions": len(c), "run": run, "accepted": accepted,
        "cleaned": cleaned_path, "model": model, "predictions": preds,
    }
