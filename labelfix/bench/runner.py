# The labelfix benchmark: noise injection of the BalanceMix protocol (Song, Kim & Lee,
# AAAI 2024, Sec. 5.1 / methods.md "Noise injection"), training of each method, label
# cleaning, and label-issue detection against cleanlab (Northcutt et al., JAIR 2021)
# and small-loss ranking; clean-test mAP per class group (methods.md "Evaluation protocol").
"""``run_bench``: the whole benchmark as one function (``labelfix bench`` calls it).

For every noise setting and seed: inject the noise into the clean training labels
(seed = the benchmark seed), train each method on the noisy labels, train labelfix's
cross-fitted detection run (:data:`DETECTION_RECIPE`) and clean it, compute the detection
metrics of labelfix, cleanlab (out-of-sample probabilities of K-fold models on the same
folds, :data:`CLEANLAB_LOSS`) and loss ranking (the in-sample masked-BCE run's final
per-cell loss), the clean-test mAP of every trained model, and the wall time of
every stage. Results: ``OUT/results.csv`` (tidy, one value per row), ``OUT/summary.md``
(mean ± std over seeds, goals), ``OUT/summary.png``, ``OUT/command.txt`` and
``OUT/machine.json``. Run directories live in ``OUT/runs/<noise>/seed<s>/``; a finished
run found there is reused (its recorded training time is reported), an interrupted one
is resumed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from labelfix.errors import LabelfixError
from labelfix.io import atomic
from labelfix.io.arrays import load_npy
from labelfix.labels import LabelSet

#: method name -> (loss, mix) of ``labelfix train``
METHODS: dict[str, tuple[str, str]] = {
    "bce": ("bce", "none"),
    "mixup": ("bce", "mixup"),
    "logicmix": ("bce", "logicmix"),
    "balancemix": ("bce", "balancemix"),
    "role": ("role", "none"),
    "epr": ("epr", "none"),
    "ll-r": ("ll-r", "none"),
}
DEFAULT_METHODS = ("bce", "mixup", "logicmix", "balancemix")
#: added to the methods in the single-positive setting (ROLE cannot be mixed)
SINGLE_POSITIVE_METHODS = ("role", "epr", "ll-r")
DEFAULT_NOISES = ("mislabel:0.4", "flip:0.2", "single-positive", "missing:0.5")
# 2 seeds keep the full default run under an hour on 2 CPU cores (docs/benchmarks.md)
DEFAULT_SEEDS = 2
DEFAULT_FOLDS = 3
#: cross-fitting rounds of labelfix's detection run (labelfix.train.crossfit)
DEFAULT_ROUNDS = 2
#: labelfix's detection run per noise kind: (loss, mix) trained cross-fitted. Masked BCE
#: where labels are known or unknown cells are few; on single-positive labels the product
#: default, ``--loss auto`` (AN-LS or AN in round 1, then ROLE with kappa estimated from
#: round 1's held-out model), which a user gets without knowing kappa; the product's
#: ``--mix auto`` everywhere (LogicMix when fine-tuning pretrained weights on labels with
#: negatives, else none; labelfix.train.optim.resolve_auto). Chosen on demo seed 0
#: (docs/benchmarks.md).
DETECTION_RECIPE = {"single-positive": ("auto", "auto"), "*": ("bce", "auto")}
#: cleanlab's out-of-sample probabilities come from K-fold models without mixing on the
#: same folds and backbone: labelfix's round 1 when its run resolved to masked BCE without
#: mixing (the same models), else a cross-fitted run of its own: masked BCE, or with
#: unknown cells as negatives ("an"; cleanlab has no unknown cells) where labelfix trains
#: a positive-only loss
CLEANLAB_LOSS = "an"
DETECTORS = ("labelfix", "cleanlab", "loss")

#: the benchmark's training configuration (CPU, demo data; docs/benchmarks.md)
BENCH_TRAIN = dict(
    backbone="test_resnet", img_size=32, epochs=10, batch_size=32, lr=3e-3, warmup_epochs=0.5,
    workers=0, randaugment=False, hflip=0.0, ema=False, progress=False,
    device="cpu",
)  # hflip 0: a mirrored digit is not the same digit
#: options of single methods at the benchmark's budget (BalanceMix's warm-up scaled to 10 epochs)
METHOD_OPTIONS: dict[str, dict] = {"balancemix": {"balancemix_warmup": 3}}
#: mAP class groups of the benchmark (demo data has 10 classes: COCO's scaled cuts leave
#: the few group empty), see labelfix.train.metrics.class_groups
MAP_GROUPS = "tertile"


def parse_noise(spec: str) -> tuple[str, float | None]:
    """``"mislabel:0.4"`` -> ``("mislabel", 0.4)``; ``"single-positive"`` -> ``(.., None)``."""
    from labelfix.data.noise import KINDS

    kind, _, rate = str(spec).partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise LabelfixError(f"--noise: {spec!r}: unknown kind {kind!r} (choose from {', '.join(KINDS)})")
    if kind == "single-positive":
        if rate:
            raise LabelfixError(f"--noise: {spec!r}: single-positive takes no rate")
        return kind, None
    try:
        value = float(rate)
    except ValueError:
        raise LabelfixError(f"--noise: {spec!r}: {kind} needs a rate, e.g. {kind}:0.2") from None
    if not 0.0 <= value <= 1.0:
        raise LabelfixError(f"--noise: {spec!r}: rate {value} is not in [0, 1]")
    return kind, value


def noise_tag(kind: str, rate: float | None) -> str:
    return kind if rate is None else f"{kind}:{rate:g}"


def methods_for(kind: str, methods: Sequence[str], single_positive_methods: Sequence[str]) -> list[str]:
    out = list(methods)
    if kind == "single-positive":
        out += [m for m in single_positive_methods if m not in out]
    return out


def detection_recipe(kind: str) -> tuple[str, str]:
    """(loss, mix) of labelfix's cross-fitted detection run for a noise kind."""
    return DETECTION_RECIPE.get(kind, DETECTION_RECIPE["*"])


@dataclass
class BenchResult:
    results: pd.DataFrame
    out: Path
    paths: dict


def aligned_test(test_path, train: LabelSet) -> LabelSet:
    from labelfix.io import read_labels

    test = read_labels(test_path)
    names = train.class_names
    missing = sorted(set(names) - set(test.class_names))
    if missing:
        raise LabelfixError(f"{test_path}: classes: missing training classes {', '.join(missing[:5])}")
    order = [test.class_names.index(n) for n in names]
    return LabelSet(np.ascontiguousarray(np.asarray(test.labels)[:, order]), test.images, train.classes.copy(),
                    test.image_root, dict(test.source))


def _method_options(loss: str, train_cfg: dict, kappa: float) -> dict:
    """Training options of one method: EPR and ROLE get ``kappa`` = the mean number of
    positives per image of the *clean* training labels (Cole et al. 2021 give the
    expected count as known; single-positive labels cannot identify it) unless
    ``loss_kwargs`` sets it."""
    opts = dict(train_cfg)
    if loss in ("epr", "role"):
        kw = dict(opts.get("loss_kwargs") or {})
        kw.setdefault("kappa", kappa)
        opts["loss_kwargs"] = kw
    return opts


def _run_complete(run_dir: Path, epochs: int) -> bool:
    p = run_dir / "stats" / "state.json"
    if not p.exists() or not (run_dir / "checkpoints" / "last.pt").exists():
        return False
    state = json.loads(p.read_text())
    return bool(state.get("complete")) and int(state.get("last_epoch", -1)) + 1 >= epochs


def train_once(cfg, log) -> tuple[dict, bool]:
    """Train (or reuse / resume) one run; returns ({train_seconds, train_cpu_seconds},
    reused). CPU seconds are this process's (all threads; workers are 0 in the bench):
    on a shared machine they estimate the cost better than the wall time."""
    import dataclasses

    from labelfix.train import train

    run_dir = Path(cfg.out)
    timing = run_dir / "bench_time.json"
    if (run_dir / "config.yaml").exists():
        from labelfix.train.config import read_run_config

        wanted_cfg = cfg
        if "auto" in (cfg.loss, cfg.mix) and (run_dir / "split.npy").exists():
            # the run recorded what --loss / --mix auto resolved to on its labels: compare with
            # what they resolve to now (a run of an older rule is not reused)
            from labelfix.train.optim import resolve_auto

            split = load_npy(run_dir / "split.npy")
            wanted_cfg = resolve_auto(cfg, load_npy(run_dir / "labels.npy"), np.flatnonzero(split == 0))
        saved, wanted = read_run_config(run_dir).to_dict(), wanted_cfg.to_dict()
        for k in ("data", "out"):   # the run records absolute paths; --out may be relative
            saved[k], wanted[k] = (str(Path(d[k]).resolve()) if d.get(k) else d.get(k) for d in (saved, wanted))
        diff = sorted(k for k in wanted if k not in ("resume", "progress", "workers") and saved.get(k) != wanted[k])
        if diff:
            raise LabelfixError(f"{run_dir}: was trained with other options ({', '.join(diff)}); "
                                f"use another --out or remove it")
    if _run_complete(run_dir, cfg.epochs) and timing.exists():
        saved = json.loads(timing.read_text())
        return {k: float(saved[k]) for k in ("train_seconds", "train_cpu_seconds")}, True
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    t0, c0 = time.perf_counter(), time.process_time()
    train(dataclasses.replace(cfg, resume=resume), log=log)
    secs = {"train_seconds": time.perf_counter() - t0, "train_cpu_seconds": time.process_time() - c0}
    atomic.write_json(timing, {**secs, "resumed": resume})
    return secs, False


#: results.csv columns that hold labelfix commit ids: read as text, since an id such as
#: "66e0517" is also a number (6.6e517 = inf) to a CSV reader
COMMIT_COLUMNS = {"commit": str, "commits": str}


def train_reference(clean: LabelSet, run_dir, *, seed: int, folds: int, fold_workers: int = 1,
                    **train_options) -> tuple[np.ndarray, float]:
    """The benchmark's reference (``baselines=("reference",)`` of :func:`run_bench`):
    cross-fitted masked-BCE fold models trained on the *true* labels ``clean`` into
    ``run_dir`` (the labels saved beside it in ``run_dir/../data``; a finished run is
    reused). Returns (float32 (N, K) held-out probabilities, training seconds)."""
    from labelfix.numeric import sigmoid
    from labelfix.train import TrainConfig

    run_dir = Path(run_dir)
    data = run_dir.parent / "data"
    if not (data / "labels.npy").exists():
        clean.save(data)
    cfg = TrainConfig(data=str(data), out=str(run_dir), loss="bce", mix="none", seed=seed, folds=folds, rounds=1,
                      fold_workers=fold_workers, **{**BENCH_TRAIN, **train_options})
    secs = train_once(cfg, lambda s: None)[0]["train_seconds"]
    return sigmoid(load_npy(run_dir / "stats" / "logits.npy").astype(np.float32)), float(secs)


def reference_metrics(noisy: np.ndarray, true: np.ndarray, probs: np.ndarray) -> dict:
    """Detection metrics of the reference's held-out probabilities ``probs`` (N, K) on the
    noisy labels: ranked exactly like cleanlab's (self-confidence, ``cleanlab_issues``)."""
    from labelfix.bench.baselines import cleanlab_issues
    from labelfix.bench.metrics import detection_metrics

    iss = cleanlab_issues(noisy, probs)
    return detection_metrics(noisy, true, iss.score, iss.suggested)


def _ap_text(det: dict, kind: str) -> str:
    """The AP of a detector that the summary reports for noise ``kind``, for the log."""
    from labelfix.bench.metrics import headline_metric

    metric = headline_metric(kind)
    return ("AP over the unknown cells" if metric == "ap_unknown" else "AP") + f" {det[metric]:.3f}"


def read_results(path) -> pd.DataFrame:
    """A results.csv of :func:`run_bench` (or the wide one of benchmarks/detection.py),
    with its commit ids as text."""
    return pd.read_csv(path, dtype=COMMIT_COLUMNS)


def _check_folds(true: np.ndarray, parsed, seeds, folds: int, train_cfg: dict, class_names) -> None:
    """Refuse, before anything trains, a noise setting and seed whose noisy labels cannot
    be cross-fitted into ``folds`` folds (a class with fewer training positives): it
    failed after the settings before it had trained."""
    from labelfix.data.noise import inject_noise
    from labelfix.train.crossfit import assign_folds
    from labelfix.train.data import split_indices

    for kind, rate in parsed:
        for seed in seeds:
            noisy = inject_noise(true, kind, rate, seed).labels
            rows = np.flatnonzero(split_indices(len(true), train_cfg.get("val_split", 0.0), seed) == 0)
            try:
                assign_folds(noisy, rows, folds, seed, class_names, folds_optional=False)
            except LabelfixError as err:
                raise LabelfixError(f"bench: --noise {noise_tag(kind, rate)}, seed {seed}: {err}") from None


def _check_same_data(saved_dir: Path, noisy_set: LabelSet, data) -> None:
    """Refuse an ``--out`` whose noisy data (``saved_dir``, written by an earlier bench)
    differ from the noisy labels of ``data`` now: its runs would be reused against labels
    they were not trained on (DATA edited or replaced since)."""
    saved = LabelSet.load(saved_dir)
    same_root = str(Path(saved.image_root or "").resolve()) == str(Path(noisy_set.image_root or "").resolve())
    if saved.fingerprint() != noisy_set.fingerprint() or not same_root:
        raise LabelfixError(f"{saved_dir}: holds the noisy labels of other data than {data} (the labels, images or "
                            f"classes differ: DATA changed since this --out was written); choose another --out")


def run_bench(
    data: str | Path | None = None,
    test: str | Path | None = None,
    noises: Sequence[str] = DEFAULT_NOISES,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    out: str | Path = "bench",
    *,
    folds: int = DEFAULT_FOLDS,
    rounds: int = DEFAULT_ROUNDS,
    fold_workers: int = 1,
    single_positive_methods: Sequence[str] = SINGLE_POSITIVE_METHODS,
    baselines: Sequence[str] = ("cleanlab", "loss"),
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    **train_overrides,
) -> BenchResult:
    """Run the benchmark and write its results into ``out``.

    Args:
        data: clean training labels (any format ``read_labels`` reads); None -> the demo
            dataset generated into ``out/data`` (``make_demo`` defaults).
        test: clean test labels for mAP; required when ``data`` is given.
        noises: noise settings ``kind[:rate]`` (:func:`parse_noise`).
        methods: training methods (keys of :data:`METHODS`).
        seeds: number of seeds (0..n-1) or an explicit list; seed s seeds the noise, the
            training run and the cleanlab folds.
        out: output folder.
        folds: cross-fitting folds of labelfix's detection run (and of cleanlab's
            out-of-sample probabilities: the same folds).
        rounds: cross-fitting rounds of labelfix's detection run.
        fold_workers: fold models of the cross-fitted runs trained side by side on the
            CPU (``labelfix train --fold-workers``; the same models as one at a time).
        single_positive_methods: methods added in the single-positive setting.
        baselines: subset of ``("cleanlab", "loss", "reference")`` (loss ranking needs
            method ``bce``). ``reference`` is no detector a user can have: cross-fitted
            masked-BCE fold models (the benchmark's recipe, ``folds`` folds) trained on the
            *true* labels, whose out-of-sample probabilities are scored like cleanlab's
            (self-confidence against the noisy labels). It measures how far a ranking by
            the model's probabilities can go with this backbone and budget when the model
            is not misled by the noise; one run per seed, shared by every noise setting
            (its folds are stratified on the true labels, so they are not the noisy runs'
            folds).
        command: the command line to record in ``command.txt``.
        log: function taking one line of progress text (default: print to stderr).
        train_overrides: :class:`labelfix.train.TrainConfig` fields replacing
            :data:`BENCH_TRAIN` (e.g. ``epochs=2``).
    Returns:
        BenchResult(results: tidy DataFrame with columns noise, kind, rate, seed, task,
        method, source, metric, value, commit (the labelfix commit recorded when the
        run behind the row was trained, ``labelfix.train.config.run_commit``: a finished
        run is reused); out; paths of the written files).
    """
    import sys

    from labelfix.bench.baselines import cleanlab_issues, loss_ranking, predict_probs
    from labelfix.numeric import sigmoid
    from labelfix.bench.metrics import detection_metrics, precision_at_recall
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.data.noise import inject_noise
    from labelfix.io import read_labels
    from labelfix.train import TrainConfig
    from labelfix.train.config import read_run_config, run_commit
    from labelfix.train.metrics import class_groups, map_report

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    quiet = (lambda s: None)
    out = Path(out)
    seeds = list(range(int(seeds))) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seeds:
        raise LabelfixError("--seeds: at least one seed is needed")
    parsed = [parse_noise(n) for n in noises]
    twice = sorted({noise_tag(*p) for p in parsed if parsed.count(p) > 1})
    if twice:   # their rows would be counted twice in every table
        raise LabelfixError(f"--noise: {', '.join(twice)} given twice (as {', '.join(map(str, noises))}); give each "
                            f"setting once")
    for m in list(methods) + list(single_positive_methods):
        if m not in METHODS:
            raise LabelfixError(f"--methods: {m!r}: unknown method (choose from {', '.join(METHODS)})")
    bad = sorted(set(baselines) - {"cleanlab", "loss", "reference"})
    if bad:
        raise LabelfixError(f"baselines: unknown {', '.join(bad)}")
    train_cfg = dict(BENCH_TRAIN)
    train_cfg.update(train_overrides)
    TrainConfig(data="x", out="x", **train_cfg).validate()   # fail fast on a bad override,
    if folds and fold_workers > 1:                             # also with the cross-fitted runs' options
        TrainConfig(data="x", out="x", **{**train_cfg, "folds": folds, "fold_workers": fold_workers}).validate()

    t_start, c_start = time.perf_counter(), time.process_time()
    if data is None and test is not None:
        raise LabelfixError(f"{test}: --test: the demo dataset brings its own test split; give DATA with it")
    if data is not None and test is None:
        raise LabelfixError(f"{data}: --test: clean test labels are required for mAP when DATA is given")
    out.mkdir(parents=True, exist_ok=True)   # only once the arguments hold: no empty folder after a refusal
    if data is None:
        from labelfix.data.demo import make_demo

        demo_dir = out / "data"
        if not ((demo_dir / "train.json").exists() and (demo_dir / "test.json").exists()):
            log(f"generating the demo dataset into {demo_dir}")
            make_demo(demo_dir)
        data, test = demo_dir / "train.json", demo_dir / "test.json"
    clean = read_labels(data)
    if (np.asarray(clean.labels) == -1).all():
        raise LabelfixError(f"{data}: labels: every cell is unknown")
    if clean.image_root is not None:
        clean.image_root = Path(clean.image_root).resolve()
    true = np.asarray(clean.labels)
    test_set = aligned_test(test, clean)
    groups = class_groups((true == 1).sum(0), clean.num_images, MAP_GROUPS)
    kappa = float((true == 1).sum(1).mean())   # EPR / ROLE's expected positives per image

    _check_folds(true, parsed, seeds, folds, train_cfg, clean.class_names)
    rows: list[dict] = []
    results_path = out / "results.csv"

    def add(tag, kind, rate, seed, task, method, source, metrics: dict, run_dir: Path):
        # commit: the labelfix code that trained the run behind the numbers (a finished run
        # is reused, so one table can hold runs of several code states)
        commit = run_commit(run_dir)
        for k, v in metrics.items():
            rows.append(dict(noise=tag, kind=kind, rate=np.nan if rate is None else rate, seed=seed, task=task,
                             method=method, source=source, metric=k, value=float(v), commit=commit))

    for kind, rate in parsed:
        tag = noise_tag(kind, rate)
        todo = methods_for(kind, methods, single_positive_methods)
        for seed in seeds:
            base = out / "runs" / tag.replace(":", "_") / f"seed{seed}"
            noisy = inject_noise(true, kind, rate, seed).labels
            noisy_set = LabelSet(noisy, clean.images, clean.classes, clean.image_root,
                                 {**clean.source, "noise": {"kind": kind, "rate": rate, "seed": seed}})
            if not (base / "data" / "labels.npy").exists():
                noisy_set.save(base / "data")
            else:   # the runs below are reused: they must be of these noisy labels
                _check_same_data(base / "data", noisy_set, data)
            log(f"[{tag} seed {seed}] {int((noisy != true).sum())} cells changed by the noise")
            logits_of = {}
            for m in todo:
                loss, mix = METHODS[m]
                cfg = TrainConfig(data=str(base / "data"), out=str(base / m), loss=loss, mix=mix, seed=seed,
                                  **_method_options(loss, {**train_cfg, **METHOD_OPTIONS.get(m, {})}, kappa))
                secs, reused = train_once(cfg, quiet)
                t0 = time.perf_counter()
                probs = predict_probs(base / m / "checkpoints" / "last.pt", test_set,
                                      batch_size=max(64, cfg.batch_size))
                rep = map_report(np.nan_to_num(probs, nan=0.0), np.asarray(test_set.labels), groups)
                add(tag, kind, rate, seed, "map", m, m, rep, base / m)
                add(tag, kind, rate, seed, "time", m, m, {**secs, "test_predict_seconds": time.perf_counter() - t0},
                    base / m)
                logits_of[m] = base / m
                log(f"[{tag} seed {seed}] {m}: test mAP {rep['map']:.2f} ({secs['train_seconds']:.0f}s"
                    f"{', reused' if reused else ''})")
            # labelfix detection: a cross-fitted run (folds x rounds), then clean
            loss, mix = detection_recipe(kind)
            det_cfg = TrainConfig(data=str(base / "data"), out=str(base / "labelfix"), loss=loss, mix=mix, seed=seed,
                                  folds=folds, rounds=rounds, fold_workers=fold_workers,
                                  **_method_options(loss, train_cfg, kappa))
            secs, reused = train_once(det_cfg, quiet)
            ran = read_run_config(base / "labelfix")   # what auto resolved to, e.g. "an-ls+role", "bce+logicmix"
            loss = ran.loss + (f"+{ran.refit_loss}" if ran.refit_loss else "") + (
                f"+{ran.mix}" if ran.mix != "none" else "")
            t0 = time.perf_counter()
            res = clean_run(base / "labelfix", report=False)
            clean_secs = time.perf_counter() - t0
            lf_score = np.asarray(res.issues.score)
            det = detection_metrics(noisy, true, lf_score, np.asarray(res.issues.suggested))
            add(tag, kind, rate, seed, "detection", "labelfix", f"{loss} cv{folds}x{rounds}", det, base / "labelfix")
            add(tag, kind, rate, seed, "time", "labelfix", f"{loss} cv{folds}x{rounds}",
                {**secs, "clean_seconds": clean_secs}, base / "labelfix")
            log(f"[{tag} seed {seed}] labelfix ({loss}, {folds} folds x {rounds} rounds): {_ap_text(det, kind)} "
                f"F1 {det['f1']:.3f} ({secs['train_seconds']:.0f}s{', reused' if reused else ''})")
            if "loss" in baselines and "bce" in logits_of:
                logits = load_npy(base / "bce" / "stats" / "logits.npy").astype(np.float32)
                iss = loss_ranking(noisy, logits)
                det = detection_metrics(noisy, true, iss.score, iss.suggested)
                add(tag, kind, rate, seed, "detection", "loss", "bce", det, base / "bce")
                log(f"[{tag} seed {seed}] loss ranking: {_ap_text(det, kind)} F1 {det['f1']:.3f}")
            elif "loss" in baselines:
                log(f"[{tag} seed {seed}] loss ranking: not computed (it ranks the in-sample loss of the 'bce' "
                    f"run; add bce to --methods)")
            if "cleanlab" in baselines:
                cv_time = {}
                if ran.loss == "bce" and ran.mix == "none":   # the same fold models: labelfix's round 1
                    source, cl_run = f"bce cv{folds} (labelfix round 1)", base / "labelfix"   # (its time is labelfix's)
                    probs_logits = load_npy(base / "labelfix" / "stats" / "round1" / "logits.npy")
                else:
                    cl_loss = "bce" if ran.loss == "bce" else CLEANLAB_LOSS
                    cv_cfg = TrainConfig(data=str(base / "data"), out=str(base / "cleanlab_cv"), loss=cl_loss,
                                         mix="none", seed=seed, folds=folds, rounds=1, fold_workers=fold_workers,
                                         **train_cfg)
                    cv_time = {"cv_seconds": train_once(cv_cfg, quiet)[0]["train_seconds"]}
                    source, cl_run = f"{cl_loss} cv{folds}", base / "cleanlab_cv"
                    probs_logits = load_npy(base / "cleanlab_cv" / "stats" / "logits.npy")
                t1 = time.perf_counter()
                iss = cleanlab_issues(noisy, sigmoid(np.asarray(probs_logits, dtype=np.float32)))
                cl_secs = time.perf_counter() - t1
                det = detection_metrics(noisy, true, iss.score, iss.suggested, image_score=iss.image_score,
                                        image_flagged=iss.image_flagged)
                add(tag, kind, rate, seed, "detection", "cleanlab", source, det, cl_run)
                # labelfix flagging by its score down to cleanlab's recall: precision there
                add(tag, kind, rate, seed, "detection", "labelfix", f"{loss} cv{folds}x{rounds}",
                    {"precision_at_cleanlab_recall": precision_at_recall(noisy, true, lf_score, det["recall"])},
                    base / "labelfix")
                add(tag, kind, rate, seed, "time", "cleanlab", source, {**cv_time, "clean_seconds": cl_secs}, cl_run)
                log(f"[{tag} seed {seed}] cleanlab ({source}): {_ap_text(det, kind)} F1 {det['f1']:.3f}")
            if "reference" in baselines:
                ref_run = out / "runs" / "reference" / f"seed{seed}"
                probs, ref_secs = train_reference(clean, ref_run, seed=seed, folds=folds, fold_workers=fold_workers,
                                                  **train_cfg)
                det = reference_metrics(noisy, true, probs)
                source = f"bce cv{folds} on the true labels"
                add(tag, kind, rate, seed, "detection", "reference", source, det, ref_run)
                add(tag, kind, rate, seed, "time", "reference", source, {"cv_seconds": ref_secs}, ref_run)
                log(f"[{tag} seed {seed}] reference ({source}): {_ap_text(det, kind)}")
            atomic.write_csv(results_path, pd.DataFrame(rows))   # partial results after every seed

    frame = pd.DataFrame(rows)
    total = time.perf_counter() - t_start
    atomic.write_csv(results_path, frame)
    paths = {"results": results_path}
    paths.update(write_summary(frame, out, train_cfg=train_cfg, folds=folds, seeds=seeds,
                               data=str(data), test=str(test)))
    atomic.write_text(out / "command.txt", (command or "run_bench(...)") + "\n")
    atomic.write_json(out / "machine.json", machine_info(total, time.process_time() - c_start))
    paths.update(command=out / "command.txt", machine=out / "machine.json")
    return BenchResult(frame, out, paths)


def machine_info(total_seconds: float, cpu_seconds: float | None = None) -> dict:
    """Where and how long the benchmark ran (wall and this process's CPU seconds)."""
    import torch

    from labelfix.train.config import package_versions

    info = {
        "total_seconds": round(total_seconds, 1),
        "total_cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }
    try:
        info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- summary
DETECTION_COLUMNS = ("ap", "ap_add", "ap_remove", "precision", "recall", "f1", "image_ap", "image_f1")
MAP_COLUMNS = ("map", "map_many", "map_medium", "map_few")


def mean_std(frame: pd.DataFrame, task: str, columns: Sequence[str]) -> pd.DataFrame:
    """Mean and std over seeds of ``task`` rows: index (noise, method), columns
    ``<metric>_mean`` / ``<metric>_std`` / ``n_seeds``."""
    sub = frame[(frame["task"] == task) & frame["metric"].isin(columns)]
    if sub.empty:
        return pd.DataFrame()
    g = sub.groupby(["noise", "method", "metric"], sort=False)["value"]
    stats = g.agg(["mean", "std", "count"]).reset_index()
    wide = stats.pivot_table(index=["noise", "method"], columns="metric", values=["mean", "std"], sort=False)
    wide.columns = [f"{metric}_{stat}" for stat, metric in wide.columns]
    wide["n_seeds"] = stats.groupby(["noise", "method"], sort=False)["count"].max()
    return wide


def _fmt(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    if mean is None or np.isnan(mean):
        return "n/a"
    if std is None or np.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _table(wide: pd.DataFrame, noise: str, columns: Sequence[str], digits: int) -> list[str]:
    sub = wide.loc[noise] if noise in wide.index.get_level_values(0) else None
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    if sub is None:
        return lines
    for method, row in sub.iterrows():
        cells = [_fmt(row.get(f"{c}_mean", np.nan), row.get(f"{c}_std", np.nan), digits=digits) for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


#: (method, noise) pairs whose mAP must beat masked BCE's: issue #3's claims
#: (BalanceMix under mislabel noise, LogicMix with half the cells unknown) and LogicMix
#: under mislabel noise
MAP_GOALS = (("balancemix", "mislabel:0.4"), ("logicmix", "mislabel:0.4"), ("logicmix", "missing:0.5"))


def goals(frame: pd.DataFrame) -> list[dict]:
    """The benchmark's goals with their measured gap: labelfix per-cell AP above
    cleanlab's in every noise setting; the mAP of each :data:`MAP_GOALS` method above
    masked BCE's in its noise setting (means over seeds; at the bench's training budget)."""
    det = frame[(frame["task"] == "detection") & (frame["metric"] == "ap")]
    out = []
    for noise in det["noise"].unique():
        d = det[det["noise"] == noise].groupby("method")["value"].mean()
        if "labelfix" in d and "cleanlab" in d:
            out.append({"goal": f"labelfix AP > cleanlab AP ({noise})", "value": float(d["labelfix"]),
                        "reference": float(d["cleanlab"]), "gap": float(d["labelfix"] - d["cleanlab"]),
                        "met": bool(d["labelfix"] > d["cleanlab"])})
    maps = frame[(frame["task"] == "map") & (frame["metric"] == "map")]
    for method, noise in MAP_GOALS:
        m = maps[maps["noise"] == noise].groupby("method")["value"].mean()
        if method in m and "bce" in m:
            out.append({"goal": f"{method} mAP > bce mAP ({noise})", "value": float(m[method]),
                        "reference": float(m["bce"]), "gap": float(m[method] - m["bce"]),
                        "met": bool(m[method] > m["bce"])})
    return out


def summary_markdown(frame: pd.DataFrame, *, train_cfg: dict, folds: int, seeds: Sequence[int], data: str,
                     test: str) -> str:
    """The Markdown summary: goals, then per noise setting the detection and mAP tables
    (mean ± std over seeds) and the mean wall time per stage."""
    det = mean_std(frame, "detection", DETECTION_COLUMNS)
    maps = mean_std(frame, "map", MAP_COLUMNS)
    times = frame[frame["task"] == "time"].groupby(["noise", "method", "metric"], sort=False)["value"].mean()
    lines = ["# labelfix bench summary", "",
             f"Data: `{data}` (test: `{test}`); seeds {list(seeds)}; cleanlab folds {folds}; mean ± std over seeds.",
             "Training: " + ", ".join(f"{k}={v}" for k, v in train_cfg.items()) + ".", "",
             "## Goals", "", "| goal | value | reference | gap | met |", "|---|---|---|---|---|"]
    for g in goals(frame):
        lines.append(f"| {g['goal']} | {g['value']:.3f} | {g['reference']:.3f} | {g['gap']:+.3f} | "
                     f"{'yes' if g['met'] else '**no**'} |")
    for noise in frame["noise"].unique():
        lines += ["", f"## {noise}", "", "Label-issue detection (per cell; image_* per image):", ""]
        lines += _table(det, noise, DETECTION_COLUMNS, 3) if not det.empty else []
        lines += ["", "Clean-test mAP (%, class groups by tertile of training positives):", ""]
        lines += _table(maps, noise, MAP_COLUMNS, 2) if not maps.empty else []
        if noise in times.index.get_level_values(0):
            lines += ["", "Mean wall time per stage (s):", "", "| method | stage | seconds |", "|---|---|---|"]
            for (method, metric), v in times.loc[noise].items():
                lines.append(f"| {method} | {metric} | {v:.1f} |")
    return "\n".join(lines) + "\n"


def summary_plot(frame: pd.DataFrame, path: Path) -> None:
    """Two panels: per-cell AP of each detector and clean-test mAP of each method, per
    noise setting (bars = mean over seeds, whiskers = std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, task, metric, title in ((axes[0], "detection", "ap", "label-issue detection: per-cell AP"),
                                    (axes[1], "map", "map", "clean-test mAP (%)")):
        sub = frame[(frame["task"] == task) & (frame["metric"] == metric)]
        if sub.empty:
            ax.set_visible(False)
            continue
        stats = sub.groupby(["noise", "method"], sort=False)["value"].agg(["mean", "std"]).reset_index()
        noises = list(dict.fromkeys(stats["noise"]))
        methods = list(dict.fromkeys(stats["method"]))
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            s = stats[stats["method"] == m].set_index("noise").reindex(noises)
            ax.bar(np.arange(len(noises)) + j * width - 0.4 + width / 2, s["mean"], width,
                   yerr=s["std"].fillna(0), label=m, capsize=2)
        ax.set_xticks(np.arange(len(noises)), noises, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_summary(frame: pd.DataFrame, out: Path, **info) -> dict:
    """Write ``summary.md``, ``summary.png`` and ``goals.json`` into ``out``."""
    out = Path(out)
    atomic.write_text(out / "summary.md", summary_markdown(frame, **info))
    atomic.write_json(out / "goals.json", goals(frame))
    summary_plot(frame, out / "summary.png")
    return {"summary": out / "summary.md", "plot": out / "summary.png", "goals": out / "goals.json"}
