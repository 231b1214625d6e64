import sys
from pathlib import Path

import pytest

# Shared builders live in tests/export/deploy_fixtures.py (test folders are not packages).
sys.path.insert(0, str(Path(__file__).parents[1] / "export"))
import deploy_fixtures


@pytest.fixture(scope="session")
def tiny_classifier():
    return deploy_fixtures.tiny_classifier()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return deploy_fixtures.tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_export_dir(tmp_path_factory):
    return deploy_fixtures.tiny_export_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def val_file(tmp_path_factory):
    return deploy_fixtures.val_file(tmp_path_factory)
