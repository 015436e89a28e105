"""``labelfix review RUN``."""

from __future__ import annotations

import click

DEFAULT_ADDRESS = "127.0.0.1"


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--name", default=None, help="FiftyOne dataset name (default: the one the run's last review used, else "
                   "labelfix-<run folder name>-<hash of its path>).")
@click.option("--max-predictions", type=click.IntRange(min=1), default=50, show_default=True,
              help="Most probable classes stored per sample in 'predictions' (the full logit vector is kept).")
@click.option("--launch", is_flag=True, help="Serve the FiftyOne App on the dataset until Ctrl-C.")
@click.option("--port", type=click.IntRange(1, 65535), default=5151, show_default=True, help="App port (with --launch).")
@click.option("--address", default=DEFAULT_ADDRESS, show_default=True,
              help="Address the App listens on (with --launch); 0.0.0.0 to reach it from other machines.")
def review(run, name, max_predictions, launch, port, address):
    """Load images, given labels and boxes, predictions and suggested corrections of RUN
    into a persistent FiftyOne dataset and optionally open the App. Decisions already
    made are kept; the 'accept' column of RUN/corrections.csv (1/0/yes/no/true/false) is
    imported. Accept or reject suggestions with the label tags 'accepted' / 'rejected' or
    the labelfix plugin's operators (press ` in the App and search "labelfix")."""
    from labelfix.cli.options import refuse_unused
    from labelfix.io.lock import run_lock
    from labelfix.review.dataset import build_review_dataset

    if not launch:
        refuse_unused(click.get_current_context(), ("port", "address"), "only used with --launch")

    with run_lock(run, "review"):
        ds, s = build_review_dataset(run, name, max_predictions=max_predictions)
    for note in s.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"dataset {s.name}: {s.samples} samples, {s.suggestions} suggestions "
               f"({s.additions} additions, {s.removals} removals)" + (f", {s.boxes} source boxes" if s.boxes else ""))
    extra = []
    if s.imported_decisions:
        extra.append(f"{s.imported_decisions} imported from the accept column of corrections.csv")
    if s.restored_decisions:
        extra.append(f"{s.restored_decisions} restored")
    if s.archived_decisions:
        extra.append(f"{s.archived_decisions} of suggestions no longer made kept in decisions_archive.csv")
    click.echo(f"decisions: {s.accepted} accepted, {s.rejected} rejected, {s.to_review} to review"
               + (f" ({'; '.join(extra)})" if extra else ""))
    click.echo(f"saved views: {', '.join(s.views)}")
    if not launch:
        click.echo(f"open it with: labelfix review {run} --launch")
        return
    _serve(ds, address, port)


def _serve(ds, address: str, port: int) -> None:
    """Serve the App until Ctrl-C; one line when it stops, no traceback."""
    import logging

    import fiftyone as fo

    session = None
    quiet = logging.getLogger("fiftyone.core.session.session")  # its multi-line remote-session banner
    level = quiet.level
    try:
        quiet.setLevel(logging.WARNING)
        try:
            session = fo.launch_app(ds, remote=True, address=address, port=port)
        finally:
            quiet.setLevel(level)
        click.echo(f"App: http://{address}:{port}/  (Ctrl-C to stop)")
        if address in ("127.0.0.1", "localhost"):
            click.echo(f"from another machine: ssh -N -L {port}:127.0.0.1:{port} USER@THIS_HOST, "
                       f"then open http://localhost:{port}/")
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        if session is not None:
            try:
                session.close()
            except KeyboardInterrupt:  # a second Ctrl-C while closing
                pass
    click.echo("App stopped")
