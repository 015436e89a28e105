"""``labelfix train DATA --out RUN``: parse options, call ``labelfix.train.train``."""

from __future__ import annotations

import contextlib
import sys

import click

from labelfix.cli.options import FILE_COLUMN_HELP, IGNORE_COLUMN_HELP
from labelfix.train.config import (CLASS_GROUPS, DEFAULT_WORKERS, MIX_CHOICES, OPTIMIZERS, SCHEDULES, TrainConfig,
                                   load_config_file)

# option name -> click declaration; the default shown comes from TrainConfig
_D = TrainConfig()


def _opt(*decls, **kw):
    return click.option(*decls, default=None, **kw)


@click.command("train")
@click.argument("data", type=click.Path(), required=False)
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory to write (required).")
@_opt("--format", "format", type=click.Choice(["coco", "csv-wide", "csv-long", "openimages", "run"]),
      help="Label file format [default: detected from the file].")
@_opt("--images", type=click.Path(file_okay=False), help="Image folder [default: the label file's folder].")
@_opt("--unlabeled", type=click.Choice(["negative", "unknown"]),
      help="COCO only: classes not annotated on an image are negative (COCO is exhaustive) or unknown "
           "[default: negative].")
@_opt("--classes", "class_descriptions", type=click.Path(dir_okay=False),
      help="Open Images class-description CSV (LabelName,DisplayName).")
@click.option("--ignore-column", "ignore_columns", multiple=True, metavar="NAME", help=IGNORE_COLUMN_HELP)
@_opt("--file-column", metavar="NAME", help=FILE_COLUMN_HELP)
@_opt("--val", type=click.Path(), help="Validation label file (same classes, same format).")
@_opt("--val-split", type=float, help=f"Hold out this fraction of DATA for validation [default: {_D.val_split}].")
@_opt("--backbone", help=f"timm model name [default: {_D.backbone}].")
@_opt("--head", type=click.Choice(["linear", "q2l", "mldecoder"]), help=f"Classifier head [default: {_D.head}].")
@_opt("--pretrained/--no-pretrained", help="Start from timm hub weights (needs network) [default: no].")
@_opt("--weights", type=click.Path(dir_okay=False), help="Start from an offline weights file.")
@_opt("--img-size", type=int, help=f"Input size in pixels [default: {_D.img_size}].")
@_opt("--frozen/--no-frozen", help="Embed every image once with the (pretrained) backbone and train only the "
                                   "head on the features: the fast mode for CPUs and large data [default: off].")
@_opt("--prior-bias/--no-prior-bias", help="Start each class's output at its frequency in the training labels "
                                           "(the head's bias; a head loaded from --weights keeps its own): "
                                           "helps a model trained from random weights learn rare classes "
                                           "(docs/training.md) "
                                           "[default: on, off with --loss role/epr].")
@_opt("--folds", type=int, help="Cross-fit: train K models, each on K-1 folds, so that clean judges every label "
                                "out of sample; the exported model is their ensemble; 4 is recommended "
                                "(docs/training.md) [default: off].")
@_opt("--rounds", type=int, help="With --folds: rounds of cross-fitting; from round 2 on, the cells the previous "
                                 "round's held-out label GMMs call suspicious train as unknown (with --refit-loss, under "
                                 "that loss) [default: 2].")
@_opt("--dynamics/--no-dynamics", help="With --folds: each fold model scores its held-out images after every "
                                       "epoch, for the loss over the epochs (stats/loss_mean.npy, the `clean "
                                       "--score loss` signal); --no-dynamics scores them after the last epoch only, "
                                       "about 8 % less time on a small model, and loss_mean is then the last "
                                       "epoch's loss [default: on].")
@_opt("--fold-workers", type=int, help="With --folds on the CPU: train this many fold models side by side, each "
                                       "in its own process with its share of the CPU threads; small models train "
                                       "faster so (docs/training.md) [default: 1].")
@_opt("--loss", help="bce, an, an-ls, wan, asl, epr, role, ll-r, ll-ct, or auto: on positive-only training labels "
                      "(most cells unknown, fewer known negatives than positives: e.g. single-positive labels) "
                      "an-ls, or an from pretrained weights, and with --folds --refit-loss role; else bce "
                      "[default: auto].")
@_opt("--refit-loss", type=click.Choice(["epr", "role"]),
      help="With --folds: cross-fitting rounds 2 and later train this loss without mixing, its expected "
           "positives per image (kappa) estimated from round 1's held-out model (docs/training.md) "
           "[default: role with --loss auto on positive-only labels, else the --loss of round 1].")
@_opt("--loss-kwargs", help="Extra loss options as YAML, e.g. '{gamma_neg: 2}'.")
@_opt("--mix", type=click.Choice(MIX_CHOICES),
      help="Mixing method; auto: logicmix when fine-tuning pretrained weights (--pretrained, --weights) on "
           "labels without unknown cells, else none (docs/training.md) [default: auto].")
@_opt("--mix-prob", type=float, help="Probability of mixing a sample (LogicMix, default 0.5) or a batch "
                                     "(mixup 0.5, icmixup 1).")
@_opt("--mixup-alpha", type=float, help="Beta(a, a) of mixup (default 0.8) and icmixup (default 0.2).")
@_opt("--logicmix-mixed-loss", type=click.Choice(["asl", "same"]),
      help="LogicMix: loss of mixed samples: ASL(gamma+ 4, gamma- 0, margin 0) as the official code, or "
           "the run's --loss [default: asl with --loss asl, else same].")
@_opt("--curriculum-start", type=int, help="LogicMix: Curriculum Labeling from this epoch on (pseudo-labels "
                                           "from the EMA model, logit > 4 / < -4) [default: off].")
@_opt("--icm-mode", type=click.Choice(["auto", "single", "multi"]),
      help="icmixup: the paper's single-label loss or the multi-label adaptation [default: auto].")
@_opt("--icm-weight", type=float, help="icmixup (multi): weight of the contrastive term [default: 1].")
@_opt("--randaugment/--no-randaugment", help="RandAugment on training images [default: on; off with --frozen].")
@_opt("--hflip", type=float, help="Horizontal-flip probability of training images; 0 where mirroring "
                                  "changes the class (text, digits) [default: 0.5; 0 with --frozen].")
@_opt("--balancemix-warmup", type=int, help="Epochs before BalanceMix's label management starts [default: 10].")
@_opt("--balancemix-delta", type=float, help="Re-labeling threshold delta [default: 0.55 for single-positive "
                                             "labels, else 0.975].")
@_opt("--balancemix-clean-threshold", type=float, help="A cell is clean when p_G > this [default: 0.5].")
@_opt("--balancemix-sampler", type=click.Choice(["sum", "mean"]),
      help="Minority-sampler score: the paper's sum over cells, or their mean [default: sum].")
@_opt("--balancemix-refine", type=click.Choice(["auto", "batch", "epoch", "evaluation"]),
      help="Re-label with the current model every mini-batch (paper), once per epoch on two training views, "
           "or from each epoch's evaluation pass (no extra forward pass); auto: batch when training images "
           "are augmented, else evaluation [default: auto].")
@_opt("--epochs", type=int, help=f"Epochs [default: {_D.epochs}].")
@_opt("--batch-size", type=int, help=f"Images per step per process [default: {_D.batch_size}].")
@_opt("--lr", type=float, help=f"Peak learning rate [default: {_D.lr}].")
@_opt("--weight-decay", type=float, help=f"Weight decay (not on biases / norms) [default: {_D.weight_decay}].")
@_opt("--optimizer", type=click.Choice(OPTIMIZERS), help=f"[default: {_D.optimizer}].")
@_opt("--momentum", type=float, help=f"SGD momentum (Nesterov) [default: {_D.momentum}].")
@_opt("--schedule", type=click.Choice(SCHEDULES), help=f"LR schedule after warm-up [default: {_D.schedule}].")
@_opt("--warmup-epochs", type=float, help=f"Linear LR warm-up length [default: {_D.warmup_epochs}].")
@_opt("--warmup-lr-ratio", type=float, help=f"Warm-up starts at lr x this [default: {_D.warmup_lr_ratio}].")
@_opt("--min-lr-ratio", type=float, help=f"Schedule ends at lr x this [default: {_D.min_lr_ratio}].")
@_opt("--accum-steps", type=int, help=f"Gradient accumulation steps [default: {_D.accum_steps}].")
@_opt("--clip-grad", type=float, help="Clip the gradient norm to this value [default: off].")
@_opt("--amp/--no-amp", help="Mixed precision (bf16 where supported, else fp16) [default: on with CUDA, off on CPU].")
@_opt("--channels-last/--no-channels-last",
      help="channels_last memory format [default: on with CUDA, off on CPU, where it is faster for some models only].")
@_opt("--ema/--no-ema", help="Keep an EMA of the weights (timm ModelEmaV3) [default: off].")
@_opt("--ema-decay", type=float, help=f"EMA decay [default: {_D.ema_decay}].")
@_opt("--class-groups", type=click.Choice(CLASS_GROUPS),
      help=f"How the validation mAP's many/medium/few class groups are cut (with --val or --val-split) "
           f"[default: {_D.class_groups}].")
@_opt("--workers", type=int, help=f"Data-loading processes [default: {DEFAULT_WORKERS}, at most the CPU count; "
                                   f"0 with --fold-workers above 1].")
@_opt("--seed", type=int, help=f"Random seed [default: {_D.seed}].")
@_opt("--device", help=f"auto, cpu, cuda, cuda:1 ... [default: {_D.device}].")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in --out from checkpoints/last.pt.")
@_opt("--progress/--no-progress", help="Show a progress bar [default: on].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file of options (names as above, '-' or '_'); flags given on the command line win.")
def train(data, config_file, **flags):
    """Train a model on DATA's labels as they are and record per-cell statistics.

    DATA is a COCO JSON (LVIS fields honoured), a wide/long CSV, Open Images verified
    labels, or a labelfix run directory. Writes RUN (see docs/training.md): config.yaml,
    the label set, split.npy, checkpoints/last.pt and best.pt, metrics.csv, stats/.
    Ctrl-C stops cleanly; --resume continues exactly where the last epoch ended.
    """
    import yaml

    from labelfix.errors import LabelfixError
    from labelfix.train import TrainingInterrupted
    from labelfix.train import train as run_training

    values = load_config_file(config_file) if config_file else {}
    from_file = set(values)
    flags["ignore_columns"] = list(flags["ignore_columns"]) or None   # not given: the config file's, or none
    given = {k: v for k, v in flags.items() if v is not None}
    if "loss_kwargs" in given:
        try:
            parsed = yaml.safe_load(given["loss_kwargs"])
        except yaml.YAMLError as err:
            raise LabelfixError(f"--loss-kwargs: not valid YAML: {err}") from None
        if not isinstance(parsed, dict):
            raise LabelfixError("--loss-kwargs: expected a mapping such as '{gamma_neg: 2}'")
        given["loss_kwargs"] = parsed
    values.update(given)
    if data is not None:
        values["data"] = data
    if values.get("resume") and values.get("out") and not values.get("data"):
        from labelfix.train.config import read_run_config

        values = {**read_run_config(values["out"]).to_dict(), **values}
    elif values.get("resume") and values.get("out"):
        from pathlib import Path

        from labelfix.train.config import read_run_config

        if (Path(values["out"]) / "config.yaml").exists():
            values = {**read_run_config(values["out"]).to_dict(), **values}
    if not values.get("data"):
        raise click.UsageError("missing DATA (argument or 'data:' in --config)")
    if not values.get("out"):
        raise click.UsageError("missing --out RUN")
    cfg = TrainConfig.from_dict(values, source=config_file or "options").validate()
    if "backbone" in from_file and "backbone" not in given:   # training would name only the option
        from labelfix.models import check_backbone_name

        check_backbone_name(cfg.backbone, f"{config_file}: backbone")
    from labelfix.io.outputs import check_run_output

    check_run_output(cfg.out, [cfg.data, cfg.val, cfg.class_descriptions, cfg.weights, config_file],
                     resume=bool(cfg.resume))
    try:
        with _rank0_lock(cfg.out):
            summary = run_training(cfg)
    except TrainingInterrupted as err:
        click.echo(f"stopped: {err}", err=True)
        sys.exit(130)
    last = summary["metrics"][-1] if summary["metrics"] else {}
    msg = f"done: {summary['epochs']} epoch{'' if summary['epochs'] == 1 else 's'} in {summary['out']}"
    if "val_map" in last:
        msg += f"; last validation mAP {last['val_map']:.2f}"
    if summary["skipped"]:
        msg += f"; {summary['skipped']} image(s) skipped (skipped_images.csv)"
    click.echo(msg)


@contextlib.contextmanager
def _rank0_lock(out: str):
    """The run-directory lock, held by the first process only (under torchrun every rank
    runs this command and they share the run directory). A run directory this command
    created is removed again when training fails before writing anything into it (bad
    data or weights): no empty folder is left behind."""
    import os
    from pathlib import Path

    from labelfix.io.lock import run_lock

    if os.environ.get("RANK", "0") != "0":
        yield
        return
    path = Path(out)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(out, "train"):
            yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()   # only an empty folder
        raise
