"""The layers of DESIGN.md hold: ``lint-imports`` keeps every contract in pyproject.toml.

CI runs ``make test`` only, so this test is where CI checks the import layering.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str | None:
    beside_python = Path(sys.executable).parent / "lint-imports"
    return str(beside_python) if beside_python.is_file() else shutil.which("lint-imports")


def test_import_layers_hold():
    exe = _lint_imports()
    if exe is None:
        pytest.skip("lint-imports is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The contracts of pyproject.toml were read and each one checked and kept.
    kept = [line for line in output.splitlines() if " KEPT" in line]
    for contract in ("Layers: arrows point down only", "use the public API", "are leaves"):
        assert any(contract in line for line in kept), output
