"""``labelfix export coco RUN --out cleaned.json``."""

from __future__ import annotations

import click

from labelfix.cli.options import FiniteFloat, check_extension


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The cleaned COCO JSON to write.")
@click.option("--decisions", type=click.Choice(["accepted", "all", "min-score"]), default="accepted",
              show_default=True,
              help="accepted: accepted suggestions only; all: every suggestion not rejected; "
                   "min-score: accepted ones plus undecided ones with score >= --min-score.")
@click.option("--min-score", type=FiniteFloat(0, 1), default=None,
              help="Score threshold for --decisions min-score (scores lie in [0, 1]).")
@click.option("--from", "source", type=click.Choice(["fiftyone", "csv"]), default=None,
              help="Where decisions come from: the review dataset, or the 'accept' column of "
                   "RUN/corrections.csv (default: fiftyone when `labelfix review` ran on RUN, else csv).")
@click.option("--name", default=None, help="Review dataset name (default: the one `labelfix review` used).")
@click.option("--changes", "change_log", type=click.Path(dir_okay=False), default=None,
              help="Change log CSV (default: <out>.changes.csv next to --out).")
@click.option("--overwrite", is_flag=True,
              help="Replace --out and the change log when they exist (refused otherwise: another run may train "
                   "on the file); re-exporting a run after more decisions needs it.")
def coco(run, out, decisions, min_score, source, name, change_log, overwrite):
    """Apply the reviewed corrections of RUN to the original COCO JSON: removed labels
    lose their annotations and become verified negatives (neg_category_ids), added
    labels get an image-level annotation marked "labelfix": "added". Everything else is
    kept as it was."""
    from labelfix.errors import LabelfixError
    from labelfix.export.coco import export_cleaned_coco
    from labelfix.io import atomic
    from labelfix.io.outputs import change_log_for, check_outputs
    from labelfix.run import load_run

    if decisions == "min-score":
        if min_score is None:
            raise LabelfixError("--decisions min-score needs --min-score X")
        decisions = ("min-score", min_score)
    elif min_score is not None:
        raise LabelfixError("--min-score applies to --decisions min-score only")
    check_extension(out, ".json", "--out", "the cleaned file is COCO JSON")
    log_path = change_log or str(change_log_for(out))
    check_extension(log_path, ".csv", "--changes", "the change log is CSV")
    r = load_run(run)
    check_outputs({"--out": out, "--changes": log_path}, [r.path, r.labelset.source.get("path")], runs=[r.path],
                  overwrite=overwrite)
    with atomic.output_set():   # the cleaned file and its change log: both or neither
        r = export_cleaned_coco(r, out, decisions=decisions, source=source, dataset_name=name,
                                change_log_path=log_path, overwrite=overwrite)
    if r.converted:
        click.echo("note: the run's labels did not come from a COCO file; they were converted to COCO "
                   "(image-level annotations) before applying the changes")
    negatives = f", {r.negatives} unknown cells verified negative (rejected additions)" if r.negatives else ""
    click.echo(f"{r.out}: {r.changes} changes applied ({r.additions} additions, {r.removals} removals{negatives}; "
               f"decisions from {r.source}); {r.verified} cells recorded as verified")
    if r.suggestions and not r.decided and not r.changes:   # an unchanged copy, which is rarely what was meant
        click.echo(f"note: no suggestion of {run} is decided yet: decide them in the App (labelfix review {run} "
                   f"--launch) or in the accept column of {run}/corrections.csv, or apply every suggestion not "
                   f"rejected with --decisions all (docs/review.md)")
    for note in r.notes:
        click.echo(f"note: {note}")
    if r.archived:
        click.echo(f"note: {r.archived} decisions on suggestions a later clean no longer makes were applied from "
                   f"{run}/decisions_archive.csv")
    click.echo(f"change log: {r.change_log}")
