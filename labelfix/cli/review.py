"""``labelfix review RUN``."""

from __future__ import annotations

import click


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--name", default=None, help="FiftyOne dataset name (default: labelfix-<run folder name>-<hash of its path>).")
@click.option("--max-predictions", type=click.IntRange(min=1), default=50, show_default=True,
              help="Most probable classes stored per sample in 'predictions' (the full logit vector is kept).")
@click.option("--launch", is_flag=True, help="Serve the FiftyOne App on the dataset until Ctrl-C.")
@click.option("--port", type=click.IntRange(1, 65535), default=5151, show_default=True, help="App port (with --launch).")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address the App listens on (with --launch); 0.0.0.0 to reach it from other machines.")
def review(run, name, max_predictions, launch, port, address):
    """Load images, given labels, predictions and suggested corrections of RUN into a
    persistent FiftyOne dataset (decisions already made are kept) and optionally open
    the App. Accept or reject suggestions with the label tags 'accepted' / 'rejected'
    or the labelfix plugin's operators (press ` in the App and search "labelfix")."""
    from labelfix.io.lock import run_lock
    from labelfix.review.dataset import build_review_dataset

    with run_lock(run, "review"):
        ds, s = build_review_dataset(run, name, max_predictions=max_predictions)
    click.echo(f"dataset {s.name}: {s.samples} samples, {s.suggestions} suggestions "
               f"({s.additions} additions, {s.removals} removals)")
    click.echo(f"decisions: {s.accepted} accepted, {s.rejected} rejected, {s.to_review} to review"
               + (f" ({s.restored_decisions} restored from decisions.csv)" if s.restored_decisions else ""))
    click.echo("saved views: additions, removals, to_review")
    if not launch:
        click.echo(f"open it with: labelfix review {run} --launch")
        return
    import fiftyone as fo

    session = fo.launch_app(ds, remote=True, address=address, port=port)
    click.echo(f"App: http://{address}:{port}/  (Ctrl-C to stop)")
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
