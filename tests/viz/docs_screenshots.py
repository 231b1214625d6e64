"""Regenerate the screenshots under docs/img/ from a run directory (not a test).

    .venv/bin/python tests/viz/docs_screenshots.py runs/imdb-demo [--out docs/img]

Writes ``report.png`` (summary, training and evaluation sections),
``report-attention.png`` (the first attention example) and ``explain.png`` (an
explain page for a short review), each as a 256-colour PNG under 500 KB. The
report is rewritten first (``write_report``), so the pictures match the code.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image
from viz_pages import Browser, Page, find_chromium

from torchformer.viz.explain import write_explain
from torchformer.viz.report import write_report

REVIEW = (
    "An absolute waste of two hours. The plot was predictable, the acting wooden, and the jokes "
    "fell flat; only the soundtrack was any good."
)


def _top(page: Page, selector: str) -> float:
    return page.evaluate(
        f"document.querySelector({json.dumps(selector)}).getBoundingClientRect().top + window.scrollY"
    )


def _bottom(page: Page, selector: str) -> float:
    return page.evaluate(
        f"document.querySelector({json.dumps(selector)}).getBoundingClientRect().bottom + window.scrollY"
    )


def shot(page: Page, start: str, end: str, path: Path, width: int = 1280) -> None:
    """PNG of the page from the top of ``start`` to the bottom of ``end``."""
    y = max(0.0, _top(page, start) - 8)
    clip = {"x": 0, "y": y, "width": width, "height": _bottom(page, end) - y + 12, "scale": 1}
    data = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)[
        "data"
    ]
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    image = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(path, optimize=True)
    size = path.stat().st_size
    print(f"{path}: {image.size[0]}×{image.size[1]}, {size // 1024} KB")
    if size > 500_000:
        raise SystemExit(f"{path} is over 500 KB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--text", default=REVIEW, help="the review shown on the explain page")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("needs chromium (apt-get install -y chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    report = write_report(args.run)
    explain = write_explain(args.run, args.text, Path(tempfile.mkdtemp()) / "explain.html")
    browser = Browser(chromium, width=1280, height=1000)
    try:
        page = browser.open(report)
        assert not page.console_errors, page.console_errors
        shot(page, "header.tf-top", "#evaluation", args.out / "report.png")
        page.evaluate("document.querySelector('.tf-example details').open = true")
        shot(page, ".tf-example", ".tf-example", args.out / "report-attention.png")
        page = browser.open(explain)
        assert not page.console_errors, page.console_errors
        # Hover (as a mouse would) the 6th token's row so the picture shows the highlight.
        page.evaluate(
            "document.querySelectorAll('.tf-matrix-view table.tf-matrix tr')[6]"
            ".dispatchEvent(new MouseEvent('mouseenter'))"
        )
        shot(page, "header.tf-top", ".tf-matrix-wrap", args.out / "explain.png")
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
