"""``labelfix demo``: the whole flow on the bundled digit-mosaic dataset."""

from __future__ import annotations

import click

from labelfix.cli.options import FiniteFloat
from labelfix.demo import DEMO_EPOCHS, DEMO_LATER_EPOCHS, DEMO_TRAIN


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="labelfix-demo", show_default=True,
              help="Folder for the generated data, the run and the exports.")
@click.option("--noise", "noise_kind", type=click.Choice(["mislabel", "flip", "single-positive", "missing"]),
              default="mislabel", show_default=True, help="Noise injected into the clean demo labels.")
@click.option("--rate", type=FiniteFloat(0, 1), default=0.4, show_default=True,
              help="Noise rate (not used by single-positive).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEMO_EPOCHS, show_default=True,
              help="Training epochs of every fold model of review round 1.")
@click.option("--later-epochs", type=click.IntRange(min=1), default=None,
              help=f"Training epochs of every fold model of review rounds 2 and later, whose labels are "
                   f"cleaner (docs/user_guide.md) [default: {DEMO_LATER_EPOCHS}, or --epochs when smaller].")
@click.option("--folds", type=click.IntRange(min=2), default=DEMO_TRAIN["folds"], show_default=True,
              help="Cross-fitting folds of every review round's training.")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Review rounds (train, clean, review, export).")
@click.option("--review-budget", type=click.IntRange(min=0), default=300, show_default=True,
              help="Top suggestions the simulated reviewer decides in each round.")
@click.option("--review-batch", type=click.IntRange(min=1), default=100, show_default=True,
              help="Suggestions the simulated reviewer decides at a time; clean re-ranks the rest with its "
                   "decisions between batches (docs/review.md).")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True)
@click.option("--no-fiftyone", "--no-review", "no_fiftyone", is_flag=True,
              help="Skip the FiftyOne dataset (no MongoDB needed); the simulated reviewer still decides "
                   "(--no-review is the earlier name).")
def demo(out, noise_kind, rate, epochs, later_epochs, folds, rounds, review_budget, review_batch, seed, no_fiftyone):
    """Generate the demo data, inject noise, then review rounds (train, clean, a simulated
    reviewer, export the cleaned COCO), export ONNX and predict with onnxruntime."""
    from labelfix.cli.options import refuse_unused
    from labelfix.demo import run_demo

    if noise_kind == "single-positive":
        refuse_unused(click.get_current_context(), ("rate",), "single-positive noise keeps one positive per "
                      "image and has no rate")
    if rounds == 1:
        refuse_unused(click.get_current_context(), ("later_epochs",), "one review round trains --epochs only")
    run_demo(out, noise=noise_kind, rate=rate, seed=seed, epochs=epochs, later_epochs=later_epochs, folds=folds,
             rounds=rounds, review_budget=review_budget, review_batch=review_batch, fiftyone=not no_fiftyone,
             log=click.echo)
