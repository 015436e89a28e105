"""``labelfix demo``: the whole flow on the bundled digit-mosaic dataset."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="labelfix-demo", show_default=True,
              help="Folder for the generated data and the run.")
@click.option("--noise", "noise_kind", type=click.Choice(["mislabel", "flip", "single-positive", "missing"]),
              default="mislabel", show_default=True)
@click.option("--rate", type=float, default=0.4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out, noise_kind, rate, seed):
    """Generate the demo data, inject noise and show what is in it."""

    from labelfix.data.demo import make_demo
    from labelfix.data.noise import write_noisy_coco
    from labelfix.info import dataset_info
    from labelfix.io import read_labels

    out = Path(out)
    paths = make_demo(out / "data", seed=seed)
    clean = read_labels(paths["train"])
    noisy_path, changes_path, changes = write_noisy_coco(
        clean, noise_kind, None if noise_kind == "single-positive" else rate, seed, out / "data" / f"train_{noise_kind}.json"
    )
    click.echo(f"demo data: {paths['train']} (clean), {paths['test']} (clean test split)")
    click.echo(f"noisy labels: {noisy_path} ({len(changes)} cells changed, truth in {changes_path})")
    summary = dataset_info(read_labels(noisy_path)).to_dict()
    click.echo(
        f"{summary['num_images']} images, {summary['num_classes']} classes, {summary['positives']} positives, "
        f"{summary['negatives']} negatives, {summary['unknown']} unknown; "
        f"CLS_Imb {summary['cls_imb']:.2f}, PN_Imb {summary['pn_imb']:.2f}, missing files {len(summary['missing_files'])}"
    )
