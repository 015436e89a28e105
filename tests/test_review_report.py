"""The clean report (RUN/report/index.html): thumbnails of the top suggestions, a
per-class table, the estimated precision of the top-N suggestions, and plots whose
titles do not overlap anything. (tests/test_browser.py renders it in Chromium.)"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_export_coco import small_coco

from labelfix.io import atomic
from labelfix.io.coco import read_coco
from labelfix.labels import POS


def report_run(demo_data, path: Path, seed: int = 0, flip: float = 0.1) -> Path:
    """A run on real demo images whose model disagrees with about ``flip`` of the cells."""
    ls = read_coco(small_coco(demo_data))
    ls.save(path)
    rng = np.random.default_rng(seed)
    lab = np.asarray(ls.labels)
    truth = lab.copy()
    flipped = rng.random(lab.shape) < flip
    truth[flipped] = np.where(lab[flipped] == POS, 0, POS)
    logits = np.where(truth == POS, 3.0, -3.0) + rng.normal(0, 1.2, lab.shape)
    atomic.write_npy(path / "stats" / "logits.npy", logits.astype(np.float16))
    atomic.write_json(path / "stats" / "state.json", {"epochs_recorded": 3, "last_epoch": 3, "complete": True})
    return path


@pytest.fixture
def cleaned(demo_data, tmp_path, monkeypatch):
    """(run, corrections, html text, figures drawn) after `clean_run` with the report."""
    from labelfix.cleaning import report
    from labelfix.cleaning.clean_run import clean_run

    figures = {}
    save = report._save

    def keep(fig, path):
        figures[Path(path).name] = _overlaps(fig)
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    run = report_run(demo_data, tmp_path / "run")
    clean_run(run, neighbours=0)
    corr = pd.read_csv(run / "corrections.csv", dtype={"given": str})
    return run, corr, (run / "report" / "index.html").read_text(), figures


def _overlaps(fig) -> list[str]:
    """Titles (axes titles, suptitle) that overlap another title, a tick label or an
    axis label, after the figure's layout engine ran."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [(f"title {ax.get_title()!r}", ax.title) for ax in fig.axes if ax.get_title()]
    if fig._suptitle is not None:
        titles.append((f"suptitle {fig._suptitle.get_text()!r}", fig._suptitle))
    others = []
    for ax in fig.axes:
        if not ax.axison:
            continue
        for t in ax.get_xticklabels() + ax.get_yticklabels() + [ax.xaxis.label, ax.yaxis.label]:
            if t.get_visible() and t.get_text():
                others.append((f"label {t.get_text()!r}", t))
    bad = []
    for i, (name, t) in enumerate(titles):
        box = t.get_window_extent(renderer)
        for other, o in titles[i + 1:] + others:
            if box.overlaps(o.get_window_extent(renderer)):
                bad.append(f"{name} overlaps {other}")
    return bad


def test_report_cards_classes_precision(cleaned):
    run, corr, text, _ = cleaned
    assert len(corr) > 10
    # one card per top suggestion (at most 50), in score order, with a thumbnail
    cards = re.findall(r"<figure class='card (add|remove)'>(.*?)</figure>", text, re.S)
    assert len(cards) == min(50, len(corr))
    for (kind, body), rec in zip(cards, corr.itertuples()):
        assert kind == rec.action
        sign = "+" if rec.action == "add" else "&minus;"
        assert f"<b class='sugg'>{sign} {html.escape(rec[3])}</b>" in body
        assert f"score {rec.score:.3f}" in body and f"image {rec.image_id}" in body
        src = re.search(r"<img src='(thumbs/\d+\.jpg)'", body).group(1)
        with Image.open(run / "report" / src) as im:
            assert im.format == "JPEG" and max(im.size) == 128
    assert sorted(p.name for p in (run / "report" / "thumbs").iterdir()) == sorted(
        f"{i}.jpg" for i in set(corr["image_id"].head(50)))

    # per-class table: suggestions, additions, removals
    table = text.split("id='classes'>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>([^<]+)</td><td class='n'>(\d+)</td><td class='n'>(\d+)</td><td class='n'>(\d+)</td>",
                      table)
    size = corr.groupby("class").size()
    adds = corr[corr.action == "add"].groupby("class").size()
    assert {r[0]: tuple(int(v) for v in r[1:]) for r in rows} == {
        c: (int(size[c]), int(adds.get(c, 0)), int(size[c] - adds.get(c, 0))) for c in size.index}
    assert [int(r[1]) for r in rows] == sorted((int(r[1]) for r in rows), reverse=True)

    # estimated precision: mean probability that the suggested label is right, the run's
    # probabilities calibrated per class against the given labels (Platt scaling)
    from labelfix.cleaning.calibration import fit_platt
    from labelfix.cleaning.clean_run import run_evidence
    from labelfix.cleaning.report import right_probability
    from labelfix.run import Run

    ev = run_evidence(Run(run))
    params = fit_platt(ev["probs"][np.arange(len(ev["given"]))], np.asarray(ev["given"]))
    cal = dict(zip(Run(run).labelset.class_names, map(tuple, params)))
    right = right_probability(corr, cal)
    raw = np.where(corr["action"] == "add", corr["probability"], 1 - corr["probability"])
    assert not np.allclose(right, raw)
    assert f"<td>all ({len(corr)})</td><td class='n'>{right.mean():.3f}</td>" in text
    assert "an estimate, not a measurement" in text and "Platt scaling" in text


def test_plot_titles_do_not_overlap(cleaned):
    _, _, text, figures = cleaned
    assert set(figures) == {"suggestions_per_class.png", "noise_rate_per_class.png", "score_distribution.png",
                            "loss_gmms.png"}
    assert {k: v for k, v in figures.items() if v} == {}
    for name in figures:
        assert f"<img class='plot' src='{name}'" in text


def test_estimated_precision_top_n():
    from labelfix.cleaning.report import estimated_precision, per_class_table

    rng = np.random.default_rng(0)
    n = 400
    corr = pd.DataFrame({
        "class": rng.choice(["cat", "dog", "eel"], n),
        "action": rng.choice(["add", "remove"], n),
        "probability": rng.random(n),
    })
    corr.loc[7, "probability"] = np.nan  # no probability: left out of the mean
    right = np.where(corr.action == "add", corr.probability, 1 - corr.probability)
    got = estimated_precision(corr)
    assert list(got["top"]) == ["top 50", "top 100", "top 300", "all (400)"]
    for top, value, used in zip([50, 100, 300, 400], got["estimated_precision"], got["with_probability"]):
        assert value == pytest.approx(np.nanmean(right[:top])) and used == top - 1
    assert list(estimated_precision(corr.head(80))["top"]) == ["top 50", "all (80)"]
    table = per_class_table(corr)
    assert table["suggestions"].sum() == n and (table["additions"] + table["removals"] == table["suggestions"]).all()
    for rec in table.itertuples():
        mine = corr["class"] == rec[1]
        assert rec.estimated_precision == pytest.approx(np.nanmean(right[mine]))


def test_platt_calibration_recovers_an_overconfident_model_and_ignores_unknown_cells():
    """fit_platt per class = sklearn's logistic regression on the logit of the known
    cells; on a model whose logits are 3x too confident it finds a slope near 1/3."""
    from sklearn.linear_model import LogisticRegression

    from labelfix.cleaning.calibration import apply_platt, fit_platt

    rng = np.random.default_rng(0)
    n = 20000
    z = rng.normal(0, 4, (n, 3))
    given = (rng.random((n, 3)) < 1 / (1 + np.exp(-z / 3))).astype(np.int8)
    given[:, 2] = 0                                     # one label value only: identity
    probs = 1 / (1 + np.exp(-z))
    unknown = rng.random((n, 3)) < 0.3
    params = fit_platt(probs, np.where(unknown, np.int8(-1), given))
    ref = LogisticRegression(C=1e4).fit(z[~unknown[:, 0], :1], given[~unknown[:, 0], 0] == 1)
    assert params[0] == pytest.approx([ref.coef_[0, 0], ref.intercept_[0]], abs=1e-3)
    assert params[0, 0] == pytest.approx(1 / 3, abs=0.03) and params[1, 0] == pytest.approx(1 / 3, abs=0.03)
    assert params[2].tolist() == [1.0, 0.0]
    # the unknown cells' values do not matter
    flipped = np.where(unknown, np.int8(-1), given)
    assert np.allclose(fit_platt(np.where(unknown, 1 - probs, probs), flipped), params)
    got = apply_platt(probs[:5, 0], [0] * 5, params)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(params[0, 0] * z[:5, 0] + params[0, 1]))), rtol=1e-4)


def test_estimated_precision_uses_the_calibration_of_each_class():
    from labelfix.cleaning.report import estimated_precision, right_probability

    p1 = 1 / (1 + np.exp(-1.0))
    corr = pd.DataFrame({"class": ["cat", "cat", "dog", "eel"], "action": ["add", "remove", "add", "add"],
                         "probability": [p1, p1, p1, np.nan]})
    cal = {"cat": (2.0, 0.0), "dog": (1.0, -1.0)}
    s2 = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(right_probability(corr, cal)[:3], [s2, 1 - s2, 0.5])
    assert np.isnan(right_probability(corr, cal)[3])
    assert estimated_precision(corr, calibration=cal)["estimated_precision"].iloc[-1] == pytest.approx(
        (s2 + 1 - s2 + 0.5) / 3)
    # clean's table holds the classes as a Categorical (with classes that have no row): the same
    from labelfix.cleaning.report import per_class_table

    cat = corr.assign(**{"class": pd.Categorical(corr["class"], categories=["bird", "cat", "dog", "eel"])})
    np.testing.assert_array_equal(right_probability(cat, cal), right_probability(corr, cal))
    pd.testing.assert_frame_equal(per_class_table(cat, cal), per_class_table(corr, cal))
    assert per_class_table(cat, cal)["class"].tolist() == ["cat", "dog", "eel"]


def test_report_without_readable_images(tmp_path):
    """Images that cannot be read get a placeholder card, not a failure."""
    from click.testing import CliRunner
    from test_clean_run import make_run, noisy_problem

    from labelfix.cli import main

    _, given, logits, _ = noisy_problem(seed=6, n=120)
    run = make_run(tmp_path / "run", given, logits)
    r = CliRunner().invoke(main, ["clean", str(run), "--neighbours", "0"])
    assert r.exit_code == 0, r.output
    text = (run / "report" / "index.html").read_text()
    n = len(pd.read_csv(run / "corrections.csv"))
    assert text.count("<div class='missing'>image not readable</div>") == min(50, n) > 0
    assert not list((run / "report" / "thumbs").iterdir())
