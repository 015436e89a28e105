"""The FiftyOne App on a review dataset in headless Chromium (Debian's, driven by
Playwright): the samples grid renders, the labelfix operators are in the operator
browser, and accepting the selected sample's suggestions from the App tags them.

Saves docs/images/review_app.png and docs/images/review_operators.png (used by
docs/review.md). Skipped only when /usr/bin/chromium is missing (`make browser`).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from test_export_coco import make_run
from test_review import fo, unique  # noqa: F401  (session fixture: isolated database)

CHROMIUM = Path("/usr/bin/chromium")
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.fiftyone,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make browser)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_grid_operators_and_accept(fo, demo_data, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from labelfix.review.dataset import build_review_dataset
    from labelfix.review.decisions import decisions_frame

    run_dir = make_run(demo_data, tmp_path / "run")
    name = unique("labelfix-review")
    ds, _ = build_review_dataset(run_dir, name)
    port = _free_port()
    # open on the saved view "to_review" (the session carries its name)
    session = fo.launch_app(view=ds.load_saved_view("to_review"), remote=True, address="127.0.0.1", port=port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/datasets/{name}", timeout=120_000)
            # the grid: one looker per sample, with the suggestions' tags
            lookers = page.locator("[data-cy=looker]")
            expect(lookers.first).to_be_visible(timeout=90_000)
            expect(page.locator("[data-cy=tag-suggestions]").first).to_be_visible(timeout=60_000)
            n_view = len(ds.load_saved_view("to_review"))
            assert 0 < n_view < len(ds)
            expect(lookers).to_have_count(n_view, timeout=60_000)
            dismiss = page.get_by_text("Dismiss", exact=True)
            if dismiss.count():
                dismiss.first.click()
            page.wait_for_timeout(1000)
            IMAGES.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(IMAGES / "review_app.png"))

            # select the first sample, then the operator browser (backtick) -> labelfix
            page.locator("[data-cy=looker]").first.hover()
            page.locator("[data-cy=looker-checkbox-]").first.click()
            page.wait_for_timeout(500)
            page.keyboard.press("`")
            page.keyboard.type("labelfix")
            for label in ("labelfix: accept suggestions", "labelfix: reject suggestions",
                          "labelfix: export cleaned COCO"):
                expect(page.get_by_text(label, exact=True)).to_be_visible(timeout=30_000)
            page.screenshot(path=str(IMAGES / "review_operators.png"))

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
            browser.close()
        assert selected is not None, "the accept operator run from the App tagged nothing"
        # exactly the suggestions of one sample were accepted
        assert selected.sample_id.nunique() == 1
        assert len(selected) == (frame.sample_id == selected.sample_id.iloc[0]).sum()
    finally:
        session.close()
        ds.delete()
