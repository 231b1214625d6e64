"""Acceptance 1: the report and explain pages in headless Chromium, with no network.

Each page must load without console errors or exceptions, fetch nothing but
itself and its inlined ``data:`` images, show its sections and decoded images,
and its interactive views must work: choosing a layer / head / window and
hovering a token changes the values in the DOM to the model's weights.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image
from viz_pages import Browser, embedded_json, find_chromium

from torchformer.viz.attention import attention_for_text
from torchformer.viz.attribution import token_attributions
from torchformer.viz.explain import alignment_html, explain_html
from torchformer.viz.report import write_report
from torchformer.viz.templates import page as html_page

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="browser tests need Debian's chromium (apt-get install -y chromium); not found on PATH",
)
SECTIONS = ["summary", "training", "evaluation", "errors", "attention", "config", "manifest"]
TOL = 0.5e-4 + 1e-9  # values are shown with 4 decimals; `all(diff <= TOL)` also fails on NaN


@pytest.fixture(scope="module")
def browser():
    b = Browser(CHROMIUM)
    yield b
    b.close()


def assert_clean_load(page) -> None:
    assert page.console_errors == []
    assert page.requests and all(u.startswith(("file:", "data:")) for u in page.requests), (
        page.requests
    )
    images = page.evaluate(
        "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
    )
    assert images and all(complete and width > 0 for _, complete, width in images), images


def choose(page, selector: str, index: int, value: object) -> None:
    """Set the ``index``-th <select> under ``selector`` and fire its change event."""
    page.evaluate(
        f"(() => {{ const s = document.querySelectorAll({json.dumps(selector + ' select')})[{index}];"
        f" s.value = {json.dumps(str(value))}; s.dispatchEvent(new Event('change')); }})()"
    )


def matrix_cells(page, selector: str) -> list[list[float]]:
    return page.evaluate(
        f"Array.from(document.querySelector({json.dumps(selector)}).querySelectorAll('td.c'))"
        ".map(td => [+td.dataset.q, +td.dataset.k, +td.dataset.v])"
    )


def token_values(page, selector: str, inner: str) -> list[float]:
    """``data-v`` of the tokens matching ``inner`` within the first element matching ``selector``."""
    return page.evaluate(
        f"Array.from(document.querySelector({json.dumps(selector)}).querySelectorAll({json.dumps(inner)}))"
        ".map(t => +t.dataset.v)"
    )


def hover(page, selector: str) -> None:
    """Move the real (emulated) mouse onto the element's centre."""
    box = page.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    page.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])


def assert_screenshot(page, path) -> None:
    page.screenshot(path)
    with Image.open(path) as image:
        width, height = image.size
        colours = image.convert("L").getextrema()
    assert width >= 1200 and height > 800
    assert colours[1] - colours[0] > 100  # not a blank page


def test_report_in_browser(browser, tiny_run, tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    path = write_report(tiny_run, n_examples=4)
    page = browser.open(path)
    assert_clean_load(page)
    sections = page.evaluate(
        "Array.from(document.querySelectorAll('main > section')).map(s => [s.id, s.offsetHeight])"
    )
    assert [s for s, _ in sections] == SECTIONS and all(h > 40 for _, h in sections)
    assert page.evaluate("document.querySelectorAll('.tf-attn[data-ready=\"1\"]').length") == 8
    n_errors = len((tiny_run / "eval/test/errors.jsonl").read_text().splitlines())
    assert page.evaluate("document.querySelectorAll('#errors tr').length") == n_errors + 1

    # The first example's matrix view: choose layer 0, head 2 -> the DOM shows those weights.
    text = json.loads((tiny_run / "eval/test/errors.jsonl").read_text().splitlines()[0])["text"]
    att = attention_for_text(clf, text).attentions  # (L, H, T, T)
    view = ".tf-example .tf-matrix-view"
    choose(page, view, 0, 0)
    choose(page, view, 1, 2)
    assert page.evaluate(f"document.querySelector('{view}').dataset.head") == "2"
    cells = matrix_cells(page, view)
    T = att.size(-1)
    assert len(cells) == T * T
    assert all(abs(v - att[0, 2, q, k].item()) <= TOL for q, k, v in cells)
    # Hovering a token's row shows its attention on the token strip.
    hover(page, f"{view} table.tf-matrix tr:nth-child(4) th.q")  # header row + 3 -> query 2
    shown = token_values(page, view, ".tf-queries .tf-tok")
    assert len(shown) == T and all(
        abs(v - att[0, 2, 2, k].item()) <= TOL for k, v in enumerate(shown)
    )
    assert page.evaluate(f"document.querySelector('{view} tr.active th.q') !== null")
    # The token view: attention received from [CLS], layer 1 head 3.
    tokens = ".tf-example .tf-token-view"
    choose(page, tokens, 0, 1)
    choose(page, tokens, 1, 3)
    received = token_values(page, tokens, ".tf-tok")
    assert len(received) == T and all(
        abs(v - att[1, 3, 0, k].item()) <= TOL for k, v in enumerate(received)
    )
    assert_screenshot(page, tmp_path / "report.png")


def test_explain_page_pages_long_inputs(browser, tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    text = " ".join(["the actors were wonderful and the story was moving"] * 12)
    path = tmp_path / "explain.html"
    path.write_text(explain_html(clf, text))
    att = attention_for_text(clf, text).attentions  # (L, H, T, T) with T = 128
    page = browser.open(path)
    assert_clean_load(page)
    assert page.evaluate(
        "Array.from(document.querySelectorAll('main > section')).map(s => s.id)"
    ) == [
        "prediction",
        "input",
        "attention",
        "attributions",
    ]
    assert (
        page.evaluate("document.querySelector('.tf-pred b').textContent")
        == clf.predict([text])[0]["label"]
    )
    view = ".tf-matrix-view"
    assert (
        page.evaluate(f"document.querySelectorAll('{view} select').length") == 3
    )  # layer, head, window
    assert len(matrix_cells(page, view)) == 64 * 64  # a window, never the full 128×128
    page.evaluate(f"document.querySelector('{view} .tf-next').click()")
    assert page.evaluate(f"document.querySelector('{view}').dataset.page") == "1"
    cells = matrix_cells(page, view)
    assert cells[0][:2] == [64, 64] and len(cells) == 64 * 64
    L = att.size(0)
    assert all(abs(v - att[L - 1, 0, q, k].item()) <= TOL for q, k, v in cells)
    # Attributions: each method's tokens carry its scores; the deletion curves are drawn.
    attributions = token_attributions(clf, text)
    for method, scores in attributions.scores.items():
        shown = token_values(page, f".tf-attribution[data-method='{method}']", ".tf-tok")
        assert len(shown) == len(scores)
        assert all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in zip(shown, scores))
    assert page.evaluate("document.querySelectorAll('#attributions img.tf-deletion').length") == 1
    assert page.evaluate("document.querySelectorAll('.tf-deletion-auc tr').length") == 5
    assert_screenshot(page, tmp_path / "explain.png")


def test_alignment_view_from_plain_tensors(browser, tmp_path):
    torch.manual_seed(0)
    src, tgt = (
        ["ein", "Hund", "läuft", "im", "Park", "."],
        ["a", "dog", "runs", "in", "the", "park", "."],
    )
    cross = tuple(
        torch.rand(1, 4, len(tgt), len(src)).softmax(-1) for _ in range(2)
    )  # (B, H, T, S) per layer
    path = tmp_path / "align.html"
    path.write_text(html_page("alignment", alignment_html(cross, src, tgt)))
    page = browser.open(path)
    assert_clean_load(page)
    assert len(embedded_json(path.read_text())) == 1
    view = ".tf-cross"
    choose(page, view, 0, 0)
    choose(page, view, 1, 3)
    cells = matrix_cells(page, view)
    assert len(cells) == len(src) * len(tgt)
    assert all(abs(v - cross[0][0, 3, q, k].item()) <= TOL for q, k, v in cells)
    hover(page, f"{view} .tf-queries .tf-tok[data-i='1']")  # output token "dog"
    shown = token_values(page, view, ".tf-keys .tf-tok")
    assert len(shown) == len(src) and all(
        abs(v - cross[0][0, 3, 1, k].item()) <= TOL for k, v in enumerate(shown)
    )
    png = page.call("Page.captureScreenshot", format="png")["data"]
    assert Image.open(io.BytesIO(base64.b64decode(png))).size[0] >= 1200
