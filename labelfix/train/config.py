"""Every option of ``labelfix train`` in one dataclass.

``TrainConfig`` is the single source of truth: the CLI builds one from flags (and an
optional ``--config FILE.yaml``, flags win), the engine reads only this object, and the
run directory's ``config.yaml`` stores it (plus versions and the dataset fingerprint) so
that ``--resume`` and later commands see exactly what was run.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from labelfix.errors import LabelfixError
from labelfix.validation import PATH_FIELDS

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
#: the registered mixing methods (labelfix.train.mixers); ``--mix`` also takes ``auto``
MIXES = ("none", "mixup", "logicmix", "balancemix", "icmixup")
MIX_CHOICES = ("auto", *MIXES)
#: options only some mixing methods use (None = not given; the method's default applies).
#: Giving one to another method is an error, never silently ignored.
MIXER_OPTIONS = {
    "mix_prob": ("mixup", "logicmix", "icmixup"),
    "mixup_alpha": ("mixup", "icmixup"),
    "logicmix_mixed_loss": ("logicmix",),
    "curriculum_start": ("logicmix",),
    "icm_mode": ("icmixup",),
    "icm_weight": ("icmixup",),
    "balancemix_warmup": ("balancemix",),
    "balancemix_delta": ("balancemix",),
    "balancemix_clean_threshold": ("balancemix",),
    "balancemix_sampler": ("balancemix",),
    "balancemix_refine": ("balancemix",),
}
CHOICES = {
    "logicmix_mixed_loss": ("asl", "same"),
    "icm_mode": ("auto", "single", "multi"),
    "balancemix_sampler": ("sum", "mean"),
    "balancemix_refine": ("auto", "batch", "epoch", "evaluation"),
}
UNLABELED = ("negative", "unknown")
#: losses that equal masked BCE on known cells (they differ only on unknown ones)
UNKNOWN_ONLY_LOSSES = ("an", "wan", "ll-r", "ll-ct")
#: losses whose expected-positive count sets the outputs' scale: the class-prior bias is off
#: for them by default and --prior-bias is refused with them (ROLE on single-positive digits
#: from random weights: unknown-cell AP 0.703 -> 0.563 with it, docs/training.md; EPR's known
#: cells are all positive there, a prior near 1)
EXPECTED_POSITIVE_LOSSES = ("epr", "role")
CLASS_GROUPS = ("scaled", "tertile")
#: data-loading processes when --workers is not given (capped at the CPU count)
DEFAULT_WORKERS = 4


@dataclass
class TrainConfig:
    """Resolved options of one training run (see docs/training.md for each one)."""

    # data
    data: str = ""
    out: str = ""
    format: str | None = None
    images: str | None = None
    unlabeled: str | None = None
    class_descriptions: str | None = None
    ignore_columns: list[str] = field(default_factory=list)   # wide CSV: columns that are not classes
    file_column: str | None = None   # CSV: the image column when it is not file_name
    val: str | None = None
    val_split: float = 0.0
    # model
    backbone: str = "resnet50"
    head: str = "linear"
    pretrained: bool = False
    weights: str | None = None
    img_size: int = 224
    frozen: bool = False
    prior_bias: bool | None = None   # None: on unless the loss is in EXPECTED_POSITIVE_LOSSES
    # objective
    loss: str = "auto"   # resolved from the training labels (labelfix.train.optim.resolve_loss)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    # cross-fitting rounds 2..R: this expected-positive loss, kappa from round 1's held-out
    # model, without mixing (labelfix.train.crossfit); None: --loss. --loss auto sets it
    refit_loss: str | None = None
    mix: str = "auto"   # resolved from the start and the labels (labelfix.train.optim.resolve_mix)
    # method options: None = the method's default (labelfix.train.mixers, docs/training.md)
    mix_prob: float | None = None
    mixup_alpha: float | None = None
    logicmix_mixed_loss: str | None = None
    curriculum_start: int | None = None
    icm_mode: str | None = None
    icm_weight: float | None = None
    balancemix_warmup: int | None = None
    balancemix_delta: float | None = None
    balancemix_clean_threshold: float | None = None
    balancemix_sampler: str | None = None
    balancemix_refine: str | None = None
    # augmentation: None = on (RandAugment, flips 0.5) for images, off with --frozen
    randaugment: bool | None = None
    hflip: float | None = None
    # optimisation
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_lr_ratio: float = 0.01
    min_lr_ratio: float = 0.01
    accum_steps: int = 1
    clip_grad: float | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    ema: bool = False
    ema_decay: float = 0.9998
    # statistics / evaluation
    folds: int = 0
    rounds: int | None = None
    dynamics: bool = True   # fold models record their held-out rows' loss every epoch (stats/loss_mean.npy)
    class_groups: str = "scaled"
    # runtime
    workers: int | None = None   # None: DEFAULT_WORKERS, at most the CPU count (loader_workers)
    fold_workers: int = 1
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    @property
    def uses_prior_bias(self) -> bool:
        """``--prior-bias`` resolved: as given, else (``None``) on unless the loss's expected
        number of positives sets the outputs' scale (:data:`EXPECTED_POSITIVE_LOSSES`)."""
        return self.prior_bias if self.prior_bias is not None else self.loss not in EXPECTED_POSITIVE_LOSSES

    @property
    def loader_workers(self) -> int:
        """``--workers`` resolved: as given, else :data:`DEFAULT_WORKERS` but at most the
        number of CPUs (more processes than cores only compete for them, and PyTorch
        warns about it); 0 with ``--fold-workers`` above 1, whose fold processes are the
        parallelism (and, being daemon processes, cannot start loader processes)."""
        if self.workers is not None:
            return self.workers
        return 0 if self.fold_workers > 1 else min(DEFAULT_WORKERS, os.cpu_count() or 1)

    def validate(self) -> "TrainConfig":
        """Raise ``LabelfixError`` on an impossible option; return self.

        Every field is type-checked (an int is an int and not a bool, a bool a bool, a
        string a string) and every numeric option range-checked, NaN and infinities
        refused (:data:`labelfix.validation.TRAIN_RULES`); then the checks that combine
        options. A device other than cpu / auto must exist on this machine."""
        from labelfix.validation import check_device, check_train_values

        def bad(name: str, what: str) -> None:
            raise LabelfixError(f"train: {option_of(name)}: {what}")

        checked = check_train_values(self.to_shallow_dict(), lambda n: f"train: {option_of(n)}", field_types())
        for name, value in checked.items():
            setattr(self, name, value)
        self.absolute_paths()
        choices = {
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "mix": MIX_CHOICES,
            "unlabeled": UNLABELED,
            "class_groups": CLASS_GROUPS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) is None and name == "unlabeled":
                continue
            if getattr(self, name) not in allowed:
                bad(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not self.data:
            bad("data", "no dataset given")
        if not self.out:
            bad("out", "no run directory given")
        if self.val and self.val_split:
            bad("val_split", "give either --val FILE or --val-split, not both")
        check_device(self.device, "train: --device", allow_auto=True)
        if self.frozen:
            if self.head != "linear":
                bad("head", f"{self.head!r}: --frozen trains a head on pooled features; use --head linear")
            if self.randaugment or self.hflip:
                bad("randaugment" if self.randaugment else "hflip",
                    "--frozen trains on fixed features, which have no augmentation")
        self.randaugment = (not self.frozen) if self.randaugment is None else bool(self.randaugment)
        self.hflip = (0.0 if self.frozen else 0.5) if self.hflip is None else self.hflip
        if self.folds == 1:
            bad("folds", f"{self.folds}: must be 0 (no cross-fitting) or >= 2")
        if self.rounds is not None and not self.folds:
            bad("rounds", "needs --folds (rounds of cross-fitting)")
        if self.folds and self.rounds is None:
            self.rounds = 2
        if self.fold_workers > 1 and not self.folds:
            bad("fold_workers", "trains cross-fitting's fold models side by side; has no effect without --folds")
        if self.fold_workers > 1 and self.workers:
            bad("workers", "not with --fold-workers above 1: each fold model trains in its own process and loads "
                           "its images there (the fold processes are the parallelism); leave --workers out or pass 0 "
                           "(on --resume, pass --workers 0: the run's config.yaml holds the value)")
        if self.fold_workers > 1 and self.frozen:
            bad("fold_workers", "not with --frozen: its fold heads share one embedding that the first fold "
                                "writes, and each trains in seconds")
        for name, users in MIXER_OPTIONS.items():
            if getattr(self, name) is not None and self.mix == "auto":
                bad(name, f"options of which method? --mix auto picks it from the start and the labels; "
                          f"pass --mix too (one of {', '.join(users)})")
            elif getattr(self, name) is not None and self.mix not in users:
                bad(name, f"not used by --mix {self.mix} (only by {', '.join(users)})")
        for name, allowed in CHOICES.items():
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                bad(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        # options that only act with another option: a changed value must not be ignored
        default = {f.name: f.default for f in fields(self)}
        for name, used, needs in (("momentum", self.optimizer == "sgd", "--optimizer sgd"),
                                  ("ema_decay", self.ema, "--ema"),
                                  ("min_lr_ratio", self.schedule != "constant", "a decaying --schedule"),
                                  ("warmup_lr_ratio", self.warmup_epochs > 0, "--warmup-epochs > 0")):
            if not used and getattr(self, name) != default[name]:
                bad(name, f"has no effect without {needs}")
        if self.class_groups != default["class_groups"] and not (self.val or self.val_split):
            bad("class_groups", "cuts the validation mAP into class groups; has no effect without --val or --val-split")
        if self.curriculum_start is not None and self.curriculum_start >= self.epochs:
            bad("curriculum_start", f"{self.curriculum_start}: pseudo-labels made at the end of epoch E train from "
                                    f"epoch E + 1, so with --epochs {self.epochs} it must be below {self.epochs}")
        if self.loss == "auto" and self.loss_kwargs:
            bad("loss_kwargs", "options of which loss? --loss auto picks it from the labels; pass --loss too")
        if self.prior_bias and self.loss in EXPECTED_POSITIVE_LOSSES:
            bad("prior_bias", f"not with --loss {self.loss}: its expected number of positives sets the outputs' "
                              f"scale (docs/training.md, 'Class-prior bias')")
        if self.mix == "balancemix" and self.loss in UNKNOWN_ONLY_LOSSES:
            bad("loss", f"{self.loss!r} only changes how unknown cells train; --mix balancemix leaves none "
                        f"(missing labels are its assumed negatives), so it would train exactly like --loss bce")
        if self.mix == "balancemix":
            self._check_balancemix_warmup(bad)
        if self.refit_loss is not None:
            if self.refit_loss not in EXPECTED_POSITIVE_LOSSES:
                bad("refit_loss", f"{self.refit_loss!r} is not one of {', '.join(EXPECTED_POSITIVE_LOSSES)} (the "
                                  f"losses whose kappa round 1's held-out model estimates)")
            if not self.folds or self.rounds < 2:
                bad("refit_loss", "trains cross-fitting's rounds 2 and later; needs --folds and --rounds 2 or more")
        if self.loss == "role" and self.mix not in ("none", "auto"):
            bad("mix", "--loss role needs --mix none (its label table has one row per image; "
                       "a mixed image has no single row)")
        return self

    def _check_balancemix_warmup(self, bad) -> None:
        """BalanceMix's label management is first fitted at the end of epoch W (the
        warm-up) and trains from epoch W + 1; W = --epochs fits it once after the last
        epoch (its statistics: the metrics row, ``stats/two_view.npy`` with
        ``--balancemix-refine epoch``; a resumed run with more epochs trains with it). W
        beyond --epochs: it would never run, refused."""
        from labelfix.train.balancemix import warmup_epochs

        w = warmup_epochs(self)
        if w > self.epochs:
            what = f"{w}" + (" (the default)" if self.balancemix_warmup is None else "")
            shorter = (f"pass --balancemix-warmup {self.epochs - 1} or fewer (it then trains from epoch "
                       f"{self.epochs}), or " if self.epochs > 1 else "pass ")
            bad("balancemix_warmup", f"{what}: label management starts after the warm-up, so with --epochs "
                                     f"{self.epochs} it would never run; {shorter}more --epochs")

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_shallow_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def absolute_paths(self) -> "TrainConfig":
        """Make the path options absolute (against the current folder), so that the
        run's config.yaml does not depend on where training was started (``fiftyone://``
        URIs and empty values stay as they are). Returns self."""
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)) and str(value) and not str(value).startswith("fiftyone://"):
                setattr(self, name, os.path.abspath(os.fspath(value)))
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a mapping; unknown keys are an error (typos must not be ignored),
        and so are values of the wrong type (checked here, naming ``source``)."""
        from labelfix.validation import check_train_values

        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise LabelfixError(f"{source}: unknown option(s): {', '.join(unknown)}")
        where = (lambda n: f"train: {option_of(n)}") if source == "options" else (lambda n: f"{source}: {n}")
        return cls(**check_train_values(values, where, field_types()))


def field_types() -> dict[str, str]:
    """``{field name: annotation string}`` of TrainConfig (for the type checks)."""
    return {f.name: str(f.type) for f in fields(TrainConfig)}


#: a ``--config`` key named after its command-line option where the field has another name
OPTION_ALIASES = {"classes": "class_descriptions", "ignore_column": "ignore_columns"}


_OPTION_OF_FIELD = {field: option for option, field in OPTION_ALIASES.items()}


def option_of(name: str) -> str:
    """The command-line option of TrainConfig field ``name`` (``--classes`` for
    ``class_descriptions``, ``--ignore-column`` for ``ignore_columns``), for messages."""
    return "--" + _OPTION_OF_FIELD.get(name, name).replace("_", "-")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``--config FILE.yaml``: a mapping of option names (``_`` or ``-``) to values.

    A ``config.yaml`` written by a run is accepted too (its ``train:`` section is used,
    without ``resume``: how that run was last started is not an option of a new one; runs
    before 2026-12-07 recorded ``resume: true`` after a resume).
    """
    from labelfix.io.yaml_file import read_yaml

    path = Path(path)
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LabelfixError(f"{path}: top level: expected a mapping of option names to values")
    if "train" in data:   # a run's config.yaml: its options are under train:
        if not isinstance(data["train"], dict):
            raise LabelfixError(f"{path}: train: expected a run's train: section, a mapping of option names "
                                f"to values, got {data['train']!r}")
        data = {k: v for k, v in data["train"].items() if k != "resume"}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in out:   # batch-size and batch_size: one option written twice
            raise LabelfixError(f"{path}: {key}: the option {option_of(name)} is given twice (with - and _); give it once")
        out[name] = value
    for option, name in OPTION_ALIASES.items():   # `classes:` as `--classes` is written
        if option in out:
            if name in out:
                raise LabelfixError(f"{path}: {option} and {name} are the same option ({option_of(name)}); give one")
            out[name] = out.pop(option)
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(out) - names)
    if unknown:
        raise LabelfixError(f"{path}: unknown option(s): {', '.join(unknown)}")
    from labelfix.validation import check_train_values

    return check_train_values(out, lambda n: f"{path}: {n}", field_types())


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers (looked up once per process:
    the metadata scan takes about 0.5 s, and a cross-fitted run writes 1 + folds x rounds
    config files)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    import numpy
    import sklearn
    import timm
    import torch

    try:
        from importlib.metadata import version

        lf = version("labelfix")
    except Exception:  # not installed (running from a checkout)
        lf = "unknown"
    commit = source_commit()
    return {
        "labelfix": lf,
        **({"labelfix_commit": commit} if commit else {}),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "timm": str(timm.__version__),
        "numpy": str(numpy.__version__),
        "scikit-learn": str(sklearn.__version__),
    }


@functools.lru_cache(maxsize=8)
def source_commit(*also: str) -> str:
    """The git commit of the labelfix source this process runs, when it runs from a git
    checkout (an editable install, as ``make env`` makes): the short HEAD, with
    ``+dirty`` when tracked files under ``labelfix/`` (or the repository paths ``also``,
    e.g. a benchmark script) have uncommitted changes. "" for an installed wheel or
    without git. Recorded in every run's ``config.yaml`` (``versions.labelfix_commit``),
    so that a result can name the code that trained it."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or not (root / "labelfix" / "__init__.py").exists():
        return ""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "labelfix", *also) if head else ""
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def _recorded_commits(run_dir: Path) -> list[str]:
    """The labelfix commits ``RUN/config.yaml`` records, oldest first ([] if none)."""
    from labelfix.io.yaml_file import read_yaml

    try:
        doc = read_yaml(Path(run_dir) / "config.yaml") or {}
    except LabelfixError:
        return []
    versions = (doc.get("versions") if isinstance(doc, dict) else None) or {}
    history = versions.get("labelfix_commits") or [versions.get("labelfix_commit")]
    return [str(c) for c in history if c]


def run_commit(run_dir: str | Path) -> str:
    """The labelfix commit recorded in ``RUN/config.yaml`` when the run was trained
    (:func:`source_commit`); for a run resumed by other code, every commit that trained
    it, oldest first, joined by ", "; "unknown" for a run from before commits were
    recorded, or trained from an installed wheel."""
    return ", ".join(_recorded_commits(Path(run_dir))) or "unknown"


def write_run_config(cfg: TrainConfig, fingerprint: str, extra: dict[str, Any] | None = None) -> str | None:
    """Write ``RUN/config.yaml`` (:func:`run_config_content`) into ``cfg.out``. A resumed
    run keeps the commits that trained it before (``versions.labelfix_commits``, when
    they differ from the current one). Returns a note for the log when this resume runs
    other code than the run's last training, else None."""
    from labelfix.io import atomic

    out = Path(cfg.out)
    doc = run_config_content(cfg, fingerprint, extra)
    history = _recorded_commits(out) if cfg.resume else []
    note = None
    if history:
        current = doc["versions"].get("labelfix_commit") or "unknown"
        commits = history if history[-1] == current else history + [current]
        if len(commits) > 1:
            doc["versions"]["labelfix_commits"] = commits
        if history[-1] != current:
            note = (f"note: {out} was trained so far by labelfix {history[-1]} and is resumed by {current}: "
                    f"its results mix two code states (config.yaml lists both)")
    atomic.write_text(out / "config.yaml", yaml.safe_dump(doc, sort_keys=False))
    return note


def run_config_content(cfg: TrainConfig, fingerprint: str, extra: dict[str, Any] | None = None) -> dict:
    """The content of ``RUN/config.yaml``: ``train`` (all options), ``versions``, ``dataset``.

    Paths are stored so that a copied or moved run still resumes: every path absolute,
    except paths inside the run directory, relative to it; ``out`` (where the run was
    written) is informational: :func:`read_run_config` replaces it with the folder the
    config was read from."""
    return {
        "train": _portable_paths({**cfg.to_dict(), "resume": False}),   # the run's options, not how it started
        "versions": package_versions(),
        "dataset": {"fingerprint": fingerprint, **(extra or {})},
    }


def _portable_paths(values: dict[str, Any]) -> dict[str, Any]:
    out_dir = values.get("out")
    if not out_dir:
        return values
    run = os.path.realpath(os.path.abspath(out_dir))
    values = dict(values)
    for name in PATH_FIELDS:
        value = values.get(name)
        if not isinstance(value, str) or not value or value.startswith("fiftyone://"):
            continue
        p = os.path.realpath(os.path.abspath(value))
        if name != "out" and (p == run or p.startswith(run.rstrip(os.sep) + os.sep)):
            values[name] = os.path.relpath(p, run)   # inside the run: relative to it
        else:
            values[name] = os.path.abspath(value)
    return values


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The ``TrainConfig`` stored in ``RUN/config.yaml``, with its paths resolved: ``out``
    is ``run_dir`` (wherever the run now is), relative paths are taken relative to the
    run directory (paths inside it; an older run's cwd-relative path is kept when it
    does not exist there)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise LabelfixError(f"{path}: missing; is {run_dir} a labelfix run directory?")
    values = load_config_file(path)
    values["out"] = str(run_dir)
    for name in PATH_FIELDS:
        value = values.get(name)
        if name == "out" or not isinstance(value, str) or not value or value.startswith("fiftyone://"):
            continue
        if not os.path.isabs(value) and (Path(run_dir) / value).exists():
            values[name] = os.path.normpath(os.path.join(run_dir, value))
    return TrainConfig.from_dict(values, source=str(path))
