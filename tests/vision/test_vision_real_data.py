"""Real images: scikit-learn's bundled digits (CI-sized run), the CIFAR-10 archive
(tier 3, ``-m data``), and the shipped digits recipe (tier 4, ``-m slow``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from torchformer.config import load_config
from torchformer.tasks.image_classify import ImageClassifyConfig, train

CONFIGS = Path(__file__).parents[2] / "src" / "torchformer" / "configs"


def digits_config(tmp_path: Path, **overrides) -> ImageClassifyConfig:
    values = {"run_dir": str(tmp_path / "run"), "train.progress": False, "report": False}
    values.update(overrides)
    return load_config(ImageClassifyConfig, CONFIGS / "digits-vit.yaml", values)


def test_a_tiny_vit_learns_the_digits_in_a_ci_sized_run(tmp_path):
    pytest.importorskip("sklearn")
    # 40 of the recipe's 200 epochs on one thread (~10 s): measured 97.2% on the held-out
    # 360 digits; 90% leaves room for another CPU's arithmetic. Chance is 10%.
    run = train(digits_config(tmp_path, **{"train.epochs": 40, "train.threads": 1}))
    result = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert result["num_examples"] == 360 and result["accuracy"] >= 0.90


@pytest.mark.data
def test_the_cifar10_archive_decodes_to_the_official_split_sizes():
    from torchformer.data.images import read_image_folder

    try:
        splits, classes = read_image_folder("cifar10")
    except FileNotFoundError as e:
        pytest.skip(f"CIFAR-10 absent (set TORCHFORMER_DATA): {e}")
    assert classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                       "horse", "ship", "truck"]  # fmt: skip
    assert splits["train"].pixels.shape == (50_000, 3, 32, 32)
    assert splits["train"].labels.bincount().tolist() == [5000] * 10
    assert splits["test"].labels.bincount().tolist() == [1000] * 10


@pytest.mark.slow
def test_the_digits_recipe_reaches_97_percent(tmp_path):
    # Its wall time (2 minutes in the acceptance) is a measurement, recorded in
    # docs/results.md with the machine's CPU flags, not asserted: tests never assert a time.
    pytest.importorskip("sklearn")
    start = time.perf_counter()
    # The recipe's setting, 2 threads (the suite's autouse fixture sets 1): at 97% the margin
    # is one or two of the 360 test digits, and the summation order of the kernels moves it
    # (oneDNN linear: 98.1% on 2 threads, 96.9% on 1; MKL's F.linear: 97.2% on 2).
    run = train(digits_config(tmp_path, **{"train.threads": 2}))
    seconds = time.perf_counter() - start
    accuracy = json.loads((run / "eval" / "test" / "metrics.json").read_text())["accuracy"]
    print(f"digits recipe: accuracy {accuracy:.4f} in {seconds:.1f} s")
    assert accuracy >= 0.97, (accuracy, seconds)
