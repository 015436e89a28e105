"""labelfix FiftyOne plugin: accept / reject suggestions, re-rank the rest with your
decisions, and export cleaned COCO.

Thin operators over :mod:`labelfix.review.decisions`, :mod:`labelfix.cleaning.clean_run`,
:mod:`labelfix.review.dataset` and :mod:`labelfix.export.coco`.
The review dataset records its run directory in ``dataset.info["labelfix_run"]``; its
``suggestions`` field holds one label per suggested change, ``"+ dog"`` (add) or
``"- dog"`` (remove), and the decision is the label tag ``accepted`` / ``rejected``.

Targets of accept / reject (param ``target``):
- ``selected_labels``: the suggestions selected in the App (labels of other fields are
  ignored);
- ``selected_samples``: every suggestion of the selected samples that is visible in the
  current view;
- ``view``: every suggestion visible in the current view (e.g. the ``to_review`` saved
  view filtered further in the sidebar).
The default follows the selection: selected labels of any field (so a selection that
holds no suggestion decides nothing, rather than the whole view), else selected samples,
else the view.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

TARGETS = ("selected_labels", "selected_samples", "view")
TARGET_LABELS = {
    "selected_labels": "Selected suggestions",
    "selected_samples": "Suggestions of the selected samples",
    "view": "All suggestions in the current view",
}


def _default_target(ctx) -> str:
    if ctx.selected_labels:
        return "selected_labels"
    if ctx.selected:
        return "selected_samples"
    return "view"


def _target_input(ctx, inputs) -> None:
    choices = types.RadioGroup()
    for name in TARGETS:
        choices.add_choice(name, label=TARGET_LABELS[name])
    inputs.enum("target", choices.values(), label="Apply to", default=_default_target(ctx), view=choices)


def _decide(ctx, decision: str) -> dict:
    from labelfix.review import decisions

    target = ctx.params.get("target") or _default_target(ctx)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "selected_labels":
        ids = [s["label_id"] for s in ctx.selected_labels or [] if s.get("field") == "suggestions"]
        count = decisions.set_decision(ctx.dataset, decision, label_ids=ids) if ids else 0
    elif target == "selected_samples":
        ids = list(ctx.selected or [])
        count = decisions.set_decision(ctx.view.select(ids), decision) if ids else 0
    else:
        count = decisions.set_decision(ctx.view, decision)
    if count and ctx.dataset.info.get("labelfix_run"):
        decisions.sync_decisions(ctx.dataset)
    if count:
        ctx.ops.reload_dataset()
    return {"count": count, "decision": decision, "target": target}


class _DecisionOperator(foo.Operator):
    """Tag the targeted suggestions with ``decision``; subclasses name the decision."""

    decision = ""
    verb = ""

    @property
    def config(self):
        return foo.OperatorConfig(
            name=f"{self.verb}_suggestions",
            label=f"labelfix: {self.verb} suggestions",
            description=f"Tag the targeted labelfix suggestions '{self.decision}'",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _target_input(ctx, inputs)
        return types.Property(inputs, view=types.View(label=f"labelfix: {self.verb} suggestions"))

    def execute(self, ctx):
        return _decide(ctx, self.decision)

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("count", label=f"Suggestions {self.decision}")
        return types.Property(outputs)


class AcceptSuggestions(_DecisionOperator):
    decision, verb = "accepted", "accept"


class RejectSuggestions(_DecisionOperator):
    decision, verb = "rejected", "reject"


class RerankSuggestions(foo.Operator):
    """``labelfix clean`` on the dataset's run with the decisions made so far and the
    options of the run's last clean (``cells/clean.json``), then the review dataset updated
    in place (docs/review.md, "Learning from your decisions"): the undecided suggestions
    are re-scored and re-ranked, decided ones keep their tags."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="rerank_suggestions",
            label="labelfix: re-rank with my decisions",
            description="Run labelfix clean with your decisions so far and update the suggestions",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view("about", types.Notice(label="Re-scores the undecided suggestions with what you accepted and "
                                                "rejected so far (labelfix clean on the run), then reloads them."))
        return types.Property(inputs, view=types.View(label="labelfix: re-rank with my decisions"))

    def execute(self, ctx):
        from labelfix.cleaning.clean_run import clean_run, last_clean_options
        from labelfix.errors import LabelfixError
        from labelfix.io.lock import run_lock
        from labelfix.review import decisions
        from labelfix.review.dataset import DEFAULT_MAX_PREDICTIONS, build_review_dataset

        run = ctx.dataset.info.get("labelfix_run")
        if not run:
            raise LabelfixError(f"dataset {ctx.dataset.name!r}: not a labelfix review dataset (no labelfix_run)")
        with run_lock(run, "clean"):
            decisions.sync_decisions(ctx.dataset)   # the App's decisions, as clean reads them
            cleaned = clean_run(run, **last_clean_options(run))   # the options of the run's last clean
            _, summary = build_review_dataset(run, ctx.dataset.name, max_predictions=ctx.dataset.info.get(
                "labelfix_max_predictions", DEFAULT_MAX_PREDICTIONS))
        ctx.ops.reload_dataset()
        return {"suggestions": summary.suggestions, "to_review": summary.to_review,
                "notes": "\n".join(n for n in cleaned.notes if "decisions" in n)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("suggestions", label="Suggestions")
        outputs.int("to_review", label="Still to review")
        outputs.str("notes", label="What clean learned from your decisions")
        return types.Property(outputs)


class ExportCleanedCoco(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="export_cleaned_coco",
            label="labelfix: export cleaned COCO",
            description="Apply the accepted suggestions to the original COCO JSON",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        run = ctx.dataset.info.get("labelfix_run") or ""
        inputs.str("run", label="Run directory", required=True, default=run)
        from labelfix.io.outputs import default_output_next_to   # outputs never go inside the run

        inputs.str("out", label="Output COCO JSON", required=True,
                   default=default_output_next_to(run, "cleaned.json") if run else None)
        choices = types.RadioGroup()
        choices.add_choice("accepted", label="Accepted suggestions only")
        choices.add_choice("all", label="Every suggestion that is not rejected")
        choices.add_choice("min-score", label="Accepted, plus undecided ones with score >= min score")
        inputs.enum("decisions", choices.values(), label="Apply", default="accepted", view=choices)
        if ctx.params.get("decisions") == "min-score":
            inputs.float("min_score", label="Min score", required=True, default=0.5)
        inputs.bool("overwrite", label="Replace the output file when it exists", default=False)
        return types.Property(inputs, view=types.View(label="labelfix: export cleaned COCO"))

    def execute(self, ctx):
        from labelfix.export.coco import export_cleaned_coco

        mode = ctx.params.get("decisions") or "accepted"
        decisions = ("min-score", float(ctx.params.get("min_score", 0.5))) if mode == "min-score" else mode
        result = export_cleaned_coco(
            ctx.params["run"], ctx.params["out"], decisions=decisions, source="fiftyone",
            dataset_name=ctx.dataset.name, overwrite=bool(ctx.params.get("overwrite", False)),
        )
        return {"out": str(result.out), "change_log": str(result.change_log), "changes": result.changes,
                "notes": "; ".join(result.notes)}   # e.g. accept cells of corrections.csv the dataset lacks

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("out", label="Cleaned COCO JSON")
        outputs.str("change_log", label="Change log")
        outputs.int("changes", label="Changes applied")
        outputs.str("notes", label="Notes")
        return types.Property(outputs)


def register(p):
    p.register(AcceptSuggestions)
    p.register(RejectSuggestions)
    p.register(RerankSuggestions)
    p.register(ExportCleanedCoco)
