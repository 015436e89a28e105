"""``labelfix bench [DATA] --noise K[:R] ... --out BENCH``: parse options, call
``labelfix.bench.runner.run_bench``, print where the results are."""

from __future__ import annotations

import shlex

import click

from labelfix.bench.runner import (DEFAULT_FOLDS, DEFAULT_METHODS, DEFAULT_NOISES, DEFAULT_ROUNDS, DEFAULT_SEEDS,
                                   METHODS, SINGLE_POSITIVE_METHODS)


def _methods(value: str) -> list[str]:
    from labelfix.errors import LabelfixError

    out = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in out if m not in METHODS]
    if bad or not out:
        raise LabelfixError(f"--methods: {value!r}: choose a comma-separated list of {', '.join(METHODS)}")
    return out


@click.command("bench")
@click.argument("data", type=click.Path(), required=False)
@click.option("--test", type=click.Path(), default=None,
              help="Clean test labels for mAP (required with DATA; the demo's test split otherwise).")
@click.option("--noise", "noises", multiple=True,
              help=f"Noise setting KIND[:RATE], repeatable [default: {' '.join(DEFAULT_NOISES)}].")
@click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True,
              help=f"Training methods, comma-separated, from {', '.join(METHODS)} (the loss-ranking baseline "
                   f"needs bce).")
@click.option("--single-positive-methods", default=",".join(SINGLE_POSITIVE_METHODS), show_default=True,
              help="Methods added in the single-positive setting ('' for none).")
@click.option("--seeds", type=click.IntRange(1), default=DEFAULT_SEEDS, show_default=True,
              help="Seeds 0..n-1 (noise, training and cleanlab folds).")
@click.option("--folds", type=click.IntRange(2), default=DEFAULT_FOLDS, show_default=True,
              help="Cross-fitting folds of labelfix's detection run and of the cleanlab baseline (the same folds).")
@click.option("--rounds", type=click.IntRange(1), default=DEFAULT_ROUNDS, show_default=True,
              help="Cross-fitting rounds of labelfix's detection run.")
@click.option("--fold-workers", type=click.IntRange(1), default=1, show_default=True,
              help="Fold models of the cross-fitted runs trained side by side on the CPU (as `labelfix train "
                   "--fold-workers`).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Training epochs [default: the bench config's].")
@click.option("--out", type=click.Path(file_okay=False), default="bench", show_default=True,
              help="Output folder (results.csv, summary.md, summary.png, runs/).")
def bench(data, test, noises, methods, single_positive_methods, seeds, folds, rounds, fold_workers, epochs,
          out):
    """Benchmark label-issue detection (labelfix vs cleanlab vs loss ranking) and clean-test
    mAP of each training method under injected label noise.

    DATA: clean training labels (any format labelfix reads); without it the demo dataset
    is generated into OUT/data. Training uses the bench's small CPU configuration
    (docs/benchmarks.md).
    """
    from labelfix.bench.runner import run_bench
    from labelfix.io.outputs import check_output_folder

    check_output_folder(out, [data, test])

    sp = [m.strip() for m in single_positive_methods.split(",") if m.strip()]
    if sp:
        _methods(",".join(sp))
    from labelfix.bench.runner import parse_noise
    from labelfix.cli.options import refuse_unused

    single = any(parse_noise(n)[0] == "single-positive" for n in (noises or DEFAULT_NOISES))
    if not single:
        refuse_unused(click.get_current_context(), ("single_positive_methods",),
                      "only used with --noise single-positive")
    overrides = {} if epochs is None else {"epochs": epochs}
    parts = ["labelfix", "bench"] + ([data] if data else []) + (["--test", test] if test else [])
    for n in noises:
        parts += ["--noise", n]
    parts += ["--methods", methods] + (["--single-positive-methods", single_positive_methods] if single else [])
    parts += ["--seeds", str(seeds), "--folds", str(folds), "--rounds", str(rounds)]
    parts += ["--fold-workers", str(fold_workers)] if fold_workers > 1 else []
    parts += (["--epochs", str(epochs)] if epochs is not None else []) + ["--out", out]
    command = shlex.join(parts)
    result = run_bench(data, test, noises=list(noises) or list(DEFAULT_NOISES), methods=_methods(methods),
                       seeds=seeds, out=out, folds=folds, rounds=rounds, fold_workers=fold_workers,
                       single_positive_methods=sp, command=command,
                       log=lambda s: click.echo(s, err=True), **overrides)
    for name, path in result.paths.items():
        click.echo(f"{name}: {path}")
