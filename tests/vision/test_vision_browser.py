"""The image run's report and explain page in headless Chromium, with no network: they
load cleanly, every image (error thumbnails, rollout overlays, plots) decodes, and the
error table shows each stored error with its image."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "viz"))
from viz_pages import Browser, find_chromium

import torchformer
from torchformer.viz.report import write_report
from torchformer.viz.rollout import write_image_explain

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="browser tests need Debian's chromium (apt-get install -y chromium); not found on PATH",
)


@pytest.fixture(scope="module")
def browser():
    b = Browser(CHROMIUM)
    yield b
    b.close()


def images_of(page) -> list:
    return page.evaluate(
        "Array.from(document.images).map(i => [i.alt, i.className, i.complete, i.naturalWidth])"
    )


def assert_clean(page) -> None:
    assert page.console_errors == []
    assert page.requests and all(u.startswith(("file:", "data:")) for u in page.requests)
    images = images_of(page)
    assert images and all(complete and width > 0 for *_, complete, width in images), images


def test_image_report_shows_thumbnails_and_rollout(browser, shapes_run):
    page = browser.open(write_report(shapes_run, n_examples=2))
    assert_clean(page)
    sections = page.evaluate(
        "Array.from(document.querySelectorAll('main > section')).map(s => s.id)"
    )
    assert "errors" in sections and "attention" in sections
    errors = (shapes_run / "eval/test/errors.jsonl").read_text().splitlines()
    assert errors  # the shapes hold planted errors
    thumbs = [i for i in images_of(page) if "tf-thumb" in i[1]]
    assert len(thumbs) == len(errors)  # one image per stored error row
    assert all(width == 16 for *_, width in thumbs)  # the images as the model saw them
    rollouts = [i for i in images_of(page) if i[0] == "attention rollout"]
    assert len(rollouts) == min(2, len(errors))
    first_row = page.evaluate("document.querySelector('#errors tr:nth-child(2)').innerText")
    assert json.loads(errors[0])["id"] in first_row  # most confidently wrong first


def test_image_explain_page(browser, shapes_run, shapes_folder, tmp_path):
    clf = torchformer.load(shapes_run)
    path = write_image_explain(
        clf, shapes_folder / "test" / "square" / "000.png", tmp_path / "e.html"
    )
    page = browser.open(path)
    assert_clean(page)
    assert [i[0] for i in images_of(page)] == ["attention rollout", "last-layer attention"]
    assert page.evaluate("document.querySelector('.tf-pred').innerText").startswith("Prediction:")
