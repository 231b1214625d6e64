"""The documentation site builds in strict mode (as ``make docs`` does), and strict mode
refuses what it should: a broken link, a broken anchor, an API reference that names
nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

for _module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
    pytest.importorskip(
        _module,
        reason="the docs tools (mkdocs, mkdocs-material, mkdocstrings[python]) are not "
        "installed: pip install -e '.[docs]'",
    )

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "mkdocs.yml"


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    result = mkdocs_build(CONFIG, site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    pages = [
        "index.html",
        "tutorials/index.html",
        *(f"tutorials/{p.stem}/index.html" for p in (ROOT / "docs/tutorials").glob("[0-9]*.md")),
        "tutorials/from-transformers/index.html",
        "results/index.html",
        "reference/nn/index.html",
        "reference/models/index.html",
        "reference/checkpoints/index.html",
        "reference/tasks/index.html",
        "reference/export/index.html",
        "reference/serve/index.html",
        "reference/viz/index.html",
    ]
    for page in pages:
        assert (site / page).is_file(), page
    assert len(list((site / "tutorials").glob("0*/index.html"))) == 9
    # The reference is generated from the code: the objects are there, with their docstrings.
    nn_page = (site / "reference/nn/index.html").read_text(encoding="utf-8")
    for name in ("torchformer.nn.MultiHeadAttention", "torchformer.nn.reference_attention"):
        assert f'id="{name}"' in nn_page, name
    assert "The attention equation, step by step." in nn_page
    tasks_page = (site / "reference/tasks/index.html").read_text(encoding="utf-8")
    assert 'id="torchformer.tasks.classify.packaged_minilm_dir"' in tasks_page
    assert (site / "objects.inv").is_file()  # the inventory other sites can link against


def strict_config(tmp_path: Path, pages: dict[str, str]) -> Path:
    """Our mkdocs.yml (theme, plugins, validation) over a docs folder of ``pages``."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in pages.items():
        (docs / name).write_text(text, encoding="utf-8")
    config.update(docs_dir=str(docs), nav=list(pages), exclude_docs="")
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_strict_mode_fails_on_a_broken_link_and_a_broken_anchor(tmp_path):
    config = strict_config(
        tmp_path,
        {
            "index.md": "# Home\n\nSee [a page](missing.md) and [a section](other.md#nowhere).\n",
            "other.md": "# Other\n\n## Somewhere\n",
        },
    )
    result = mkdocs_build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "missing.md" in result.stderr and "#nowhere" in result.stderr, result.stderr


def test_strict_mode_fails_on_an_api_reference_to_nothing(tmp_path):
    config = strict_config(tmp_path, {"index.md": "# API\n\n::: torchformer.nn.no_such_thing\n"})
    result = mkdocs_build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "torchformer.nn.no_such_thing" in result.stderr, result.stderr
