"""``labelfix demo``: the whole flow on the bundled digit-mosaic dataset."""

from __future__ import annotations

import click


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="labelfix-demo", show_default=True,
              help="Folder for the generated data, the run and the exports.")
@click.option("--noise", "noise_kind", type=click.Choice(["mislabel", "flip", "single-positive", "missing"]),
              default="mislabel", show_default=True, help="Noise injected into the clean demo labels.")
@click.option("--rate", type=click.FloatRange(0, 1), default=0.4, show_default=True,
              help="Noise rate (not used by single-positive).")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-review", is_flag=True, help="Skip the FiftyOne step (no MongoDB needed).")
def demo(out, noise_kind, rate, epochs, seed, no_review):
    """Generate the demo data, inject noise, train, clean, review, export COCO and ONNX,
    and predict with onnxruntime."""
    from labelfix.demo import run_demo

    run_demo(out, noise=noise_kind, rate=rate, seed=seed, epochs=epochs, review=not no_review, log=click.echo)
