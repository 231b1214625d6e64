"""Fixtures shared across test folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from torchformer.data.paths import data_dir


def pytest_terminal_summary(terminalreporter) -> None:
    """The CPU's SIMD and dot-product flags, at the end of every run's output (``-q``
    included): int8 and bf16 results, and which paths a test expects to run, depend on them."""
    from torchformer.export.quantize import cpu_int8_support

    terminalreporter.write_line(cpu_int8_support().summary().splitlines()[0])


# --- real data (tier 3, `-m data`) -----------------------------------------------------
@pytest.fixture(scope="session")
def imdb_labeled() -> dict:
    """IMDB ``train`` and ``test`` records, read once per session in one pass over the
    labeled archive (about 2 s); skips when the data is absent."""
    from torchformer.data.imdb import find_imdb, read_imdb_splits

    try:
        source = find_imdb(data_dir())
    except FileNotFoundError as error:
        pytest.skip(f"IMDB data absent (set TORCHFORMER_DATA): {error}")
    return read_imdb_splits(source, ("train", "test"))


# --- tiny classifiers and exports for the deployment tests (export/, serve/, bench/) ----
# Built once per session; the builders live in tests/export/deploy_fixtures.py, importable
# from any test module (test folders are not packages).
sys.path.insert(0, str(Path(__file__).parent / "export"))


def _deploy_fixtures():
    import deploy_fixtures

    return deploy_fixtures


@pytest.fixture(scope="session")
def tiny_classifier():
    return _deploy_fixtures().tiny_classifier()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return _deploy_fixtures().tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_export_dir(tmp_path_factory):
    return _deploy_fixtures().tiny_export_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def val_file(tmp_path_factory):
    return _deploy_fixtures().val_file(tmp_path_factory)


# --- threads ------------------------------------------------------------------------------
def pytest_configure(config) -> None:
    """One intra-op thread from the start, so that module- and session-scoped fixtures (which
    run before the per-test fixture below) train on one thread too: a model a fixture trains
    is then the same whatever OMP_NUM_THREADS and the core count say (the summation order
    of two threads moves the tiny models' last digits, and a borderline test with them)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Run every test on one intra-op thread, restoring the setting after.

    The tests use tiny models, where a second thread only adds hand-off cost, and on a
    busy 2-core machine two-thread torch processes slow each other 10x or more.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
