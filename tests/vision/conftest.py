"""Fixtures of the vision tests: the made-up shapes data set and a ViT trained on it
(the builders are in ``vision_data.py``, importable from the test modules)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vision_data import make_image_folder, vit_config


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("shapes"), mislabelled=2)


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory, shapes_folder) -> Path:
    """A finished run on the shapes (about 10 s on one thread), with its report."""
    from torchformer.cli.classify import write_run_report
    from torchformer.tasks.image_classify import train

    config = vit_config(tmp_path_factory.mktemp("shapes-run"), shapes_folder)
    run = train(config)
    write_run_report(run, config)
    return run
