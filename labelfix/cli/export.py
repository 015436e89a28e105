"""``labelfix export coco|onnx``."""

import click

from labelfix.cli import LazyGroup


@click.group(
    cls=LazyGroup,
    lazy={
        "coco": "labelfix.cli.export_coco:coco",
        "onnx": "labelfix.cli.export_onnx:onnx",
    },
)
def export() -> None:
    """Write the cleaned COCO JSON or the trained model as ONNX."""
