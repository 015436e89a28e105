"""``labelfix export onnx RUN --out model.onnx``: the trained model as ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from labelfix.cli.options import FiniteFloat, check_extension
from labelfix.validation import MAX_IMG_SIZE


@click.command("onnx")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="ONNX file to write (atomically).")
@click.option("--checkpoint", "which", type=click.Choice(["best", "last"]), default="best",
              show_default=True, help="Which checkpoint of the run to export.")
@click.option("--ema", is_flag=True, help="Export the EMA weights of the checkpoint.")
@click.option("--opset", type=click.IntRange(min=18), default=18, show_default=True,
              help="ONNX opset version (18 up to the newest the installed onnx supports; never changed silently).")
@click.option("--img-size", type=click.IntRange(min=1, max=MAX_IMG_SIZE), default=None,
              help="Input size S of the graph [default: the training size].")
@click.option("--fp16", is_flag=True,
              help="Float16 weights and arithmetic (float32 input/output; looser self-check).")
@click.option("--threshold", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Default decision threshold stored for `labelfix predict`.")
def onnx(run: Path, out: Path, which: str, ema: bool, opset: int, img_size: int | None,
         fp16: bool, threshold: float) -> None:
    """Export the model of training run RUN to ONNX (dynamic batch), check it against
    torch with onnxruntime, and store class names, input size and normalisation in the
    model's metadata."""
    from labelfix.export.onnx import export_run
    from labelfix.io.outputs import check_outputs

    check_extension(out, ".onnx", "--out", "the model is written as ONNX")
    check_outputs({"--out": out}, [run], runs=[run])
    path = export_run(run, out, which=which, ema=ema, opset=opset, img_size=img_size,
                      fp16=fp16, threshold=threshold)
    click.echo(f"wrote {path}")
