"""``labelfix clean RUN``."""

from __future__ import annotations

import click

from labelfix.cleaning.neighbours import DEFAULT_K
from labelfix.cleaning.scores import list_scorers
from labelfix.cli.options import FiniteFloat


def _class_names(text: str | None) -> list[str] | None:
    """``--classes``: one CSV row of names (a name with a comma is quoted), blanks dropped."""
    if text is None:
        return None
    import csv

    return [c.strip() for c in next(csv.reader([text], skipinitialspace=True), []) if c.strip()]


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--clean-threshold", type=FiniteFloat(0, 1, max_open=True), default=0.5, show_default=True,
              help="p_clean (GMM posterior of the low-loss component) above which a known cell is clean.")
@click.option("--relabel-threshold", type=FiniteFloat(0.5, 1, max_open=True), default=None,
              help="delta: a non-clean cell whose two-view probability is > delta is re-labeled to 1, < 1-delta "
                   "to 0, else ambiguous (suggested by probability > 0.5). It sets the state column of "
                   "corrections.csv, not which cells are suggested [default: 0.975, 0.55 for single-positive data].")
@click.option("--max-suggestions", type=click.IntRange(min=0), default=None, help="Keep only the top suggestions.")
@click.option("--classes", default=None, help='Comma-separated class names to suggest corrections for (CSV quoting '
                                             'for a name with a comma: --classes \'"dog, cat",bird\').')
@click.option("--score", "scorer", type=click.Choice(list_scorers()), default=None,
              help="Issue score rule (docs/cleaning.md) [default: evidence].")
@click.option("--neighbours", type=click.IntRange(min=0), default=DEFAULT_K, show_default=True,
              help="Neighbours per image in the image embedding: their label votes enter the scores evidence, "
                   "evidence_gmm and posterior, and images that are near-duplicates are grouped "
                   "(cells/duplicates.csv). 0: neither.")
@click.option("--single-positive-removals", is_flag=True,
              help="Single-positive data: also suggest removing given positives (by default every given "
                   "positive is trusted).")
@click.option("--learn-from-decisions/--no-learn-from-decisions", default=True, show_default=True,
              help="Weigh the scores per class and direction (add / remove) by the share of each you "
                   "accepted among this run's suggestions decided so far (docs/review.md).")
@click.option("--with-run", "with_runs", multiple=True, type=click.Path(file_okay=False),
              help="Another run trained on the same labels (another loss, or the same recipe with another "
                   "--seed: repeated cross-fitting): its held-out probabilities are averaged with RUN's; "
                   "repeatable (docs/cleaning.md, 'Averaging runs').")
@click.option("--no-report", is_flag=True, help="Skip the HTML report and plots.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the GMM fits (cpu, cuda).")
def clean(run, clean_threshold, relabel_threshold, max_suggestions, classes, scorer, neighbours,
          single_positive_removals, learn_from_decisions, with_runs, no_report, device):
    """Label-wise management of a trained run: per-class GMMs (clean / re-labeled /
    ambiguous), estimates for unknown cells, ranked corrections in RUN/corrections.csv,
    per-cell arrays in RUN/cells/ and a report in RUN/report/."""
    from labelfix.cleaning.clean_run import clean_run
    from labelfix.errors import LabelfixError
    from labelfix.io.lock import run_lock
    from labelfix.review.decisions import refresh_decisions
    from labelfix.validation import check_device

    check_device(device, "--device")   # before any work: cuda without a GPU is one line

    names = _class_names(classes)
    if names is not None and not names:
        raise LabelfixError(f"--classes {classes!r}: no class name in it (comma-separated names)")
    with run_lock(run, "clean"):
        synced = refresh_decisions(run)   # tags set with the App's tag button reach decisions.csv only so
        res = clean_run(run, clean_threshold=clean_threshold, relabel_threshold=relabel_threshold,
                        max_suggestions=max_suggestions, classes=names, report=not no_report, device=device,
                        scorer=scorer, neighbours=neighbours, single_positive_removals=single_positive_removals,
                        learn_from_decisions=learn_from_decisions, with_runs=with_runs)
    for note in ([synced] if synced else []) + res.notes:
        click.echo(f"note: {note}", err=True)
    c, n = res.corrections, res.issues.p_clean.shape[0]
    click.echo(f"{n - res.issues.settings['unscored_images']} of {n} images scored: {len(c)} suggested corrections "
               f"({int((c['action'] == 'add').sum())} add, {int((c['action'] == 'remove').sum())} remove) in "
               f"{run}/corrections.csv" + (f", report {res.report}" if res.report else ""))
