"""The FiftyOne App on a review dataset, and the clean report, in headless Chromium
(Debian's, driven by Playwright): the grid shows additions green ("+ class") and
removals red ("- class"), the sample modal shows a sample's boxes and its suggestions
with their attributes, the labelfix operators are in the operator browser and accepting
the selected sample's suggestions from the App tags them; the report's thumbnails load.

Screenshots (used by docs/review.md): docs/images/review_grid.png, review_sample.png,
review_operators.png and report.png, written there only with
LABELFIX_WRITE_SCREENSHOTS=1 (so that test runs do not rewrite tracked files), else into
the test's temporary folder. Skipped only when /usr/bin/chromium is missing
(`make browser`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from test_export_coco import make_run
from test_review import fo, unique  # noqa: F401  (session fixture: isolated database)

CHROMIUM = Path("/usr/bin/chromium")
DOC_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
GREEN, RED = "rgb(44, 160, 44)", "rgb(214, 39, 40)"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.fiftyone,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make browser)"),
]


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: docs/images with LABELFIX_WRITE_SCREENSHOTS=1, else tmp."""
    if os.environ.get("LABELFIX_WRITE_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOC_IMAGES
    return tmp_path


@pytest.fixture
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dismiss(page) -> None:
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click()


def test_app_grid_sample_operators_and_accept(fo, demo_data, tmp_path, chromium, shots):  # noqa: F811
    from playwright.sync_api import expect

    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import decisions_frame

    run_dir = make_run(demo_data, tmp_path / "run", lvis=True, seed=2)  # boxes, negatives, suggestions
    name = unique("labelfix-review")
    ds, _ = build_review_dataset(run_dir, name)
    port = _free_port()
    to_review = ds.load_saved_view("to_review")
    # the dataset too, so that the App uses its colour scheme; the session opens on to_review
    session = fo.launch_app(ds, view=to_review, remote=True, address="127.0.0.1", port=port)
    try:
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/datasets/{name}", timeout=120_000)
        lookers = page.locator("[data-cy=looker]")
        expect(lookers.first).to_be_visible(timeout=90_000)
        pills = page.locator("[data-cy=tag-suggestions]")
        expect(pills.first).to_be_visible(timeout=60_000)
        expect(lookers).to_have_count(len(to_review), timeout=60_000)
        _dismiss(page)
        page.wait_for_timeout(1000)
        # additions and removals read at a glance: "+ class" green, "- class" red
        seen = pills.evaluate_all("els => els.map(e => [e.textContent, getComputedStyle(e).backgroundColor])")
        assert {t[:2] for t, _ in seen} == {"+ ", "- "}
        assert all(color == (GREEN if text.startswith("+ ") else RED) for text, color in seen), seen
        page.screenshot(path=str(shots / "review_grid.png"))

        # the sample modal: boxes of the source COCO file, suggestions with their attributes
        sample = to_review.first()
        page.set_viewport_size({"width": 1400, "height": 1400})  # room for the suggestion attributes
        lookers.first.click()
        modal = page.locator("[data-cy=modal]")
        expect(modal).to_be_visible(timeout=30_000)
        for group in ("TAGS", "METADATA"):  # room for the suggestion attributes
            page.locator(f"[data-cy=sidebar-group-entry-{group}]").last.click()
        page.locator("[data-cy=sidebar-field-arrow-enabled-suggestions]").last.click()
        for attr in ("given", "suggested", "probability", "score", "state"):
            expect(modal.get_by_text(attr, exact=True).first).to_be_visible(timeout=30_000)
        expect(modal.get_by_text(sample.suggestions.classifications[0].label, exact=True).first).to_be_visible()
        expect(page.locator("[data-cy=sidebar-field-detections]").last).to_be_visible()
        assert len(sample.detections.detections) > 0
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots / "review_sample.png"))
        page.mouse.click(12, 700)  # outside the modal closes it
        expect(modal).to_have_count(0, timeout=30_000)
        page.set_viewport_size({"width": 1400, "height": 900})

        # select the first sample, then the operator browser (backtick) -> labelfix
        lookers.first.hover()
        page.locator("[data-cy=looker-checkbox-]").first.click()
        page.wait_for_timeout(500)
        page.keyboard.press("`")
        page.keyboard.type("labelfix")
        for label in ("labelfix: accept suggestions", "labelfix: reject suggestions",
                      "labelfix: re-rank with my decisions", "labelfix: export cleaned COCO"):
            expect(page.get_by_text(label, exact=True)).to_be_visible(timeout=30_000)
        page.screenshot(path=str(shots / "review_operators.png"))

        # run accept_suggestions on the selected sample from the App
        page.get_by_text("labelfix: accept suggestions", exact=True).click()
        expect(page.get_by_text("Suggestions of the selected samples")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Execute").click()
        selected = None
        for _ in range(60):
            frame = decisions_frame(ds)
            if (frame.decision == "accepted").any():
                selected = frame[frame.decision == "accepted"]
                break
            page.wait_for_timeout(500)
        assert selected is not None, "the accept operator run from the App tagged nothing"
        # exactly the suggestions of one sample were accepted
        assert selected.sample_id.nunique() == 1
        assert len(selected) == (frame.sample_id == selected.sample_id.iloc[0]).sum()
    finally:
        session.close()
        ds.delete()


def test_report_in_chromium(demo_data, tmp_path, chromium, shots):
    from playwright.sync_api import expect
    from test_review_report import report_run

    from labelfix.cleaning.clean_run import clean_run

    run = report_run(demo_data, tmp_path / "run")
    clean_run(run, neighbours=0)
    page = chromium.new_page(viewport={"width": 1280, "height": 1500})
    page.goto((run / "report" / "index.html").resolve().as_uri())
    cards = page.locator("figure.card")
    expect(cards.first).to_be_visible(timeout=30_000)
    # every thumbnail and plot loaded (a broken link has naturalWidth 0)
    sizes = page.locator("img").evaluate_all("els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
    assert len(sizes) > 4 and all(w > 0 for _, w in sizes), sizes
    assert {s.split("/")[0] for s, _ in sizes} >= {"thumbs", "loss_gmms.png"}
    expect(page.get_by_text("Estimated precision of the top suggestions")).to_be_visible()
    expect(page.get_by_text("Suggestions per class", exact=True)).to_be_visible()
    page.screenshot(path=str(shots / "report.png"))
