"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest

from torchformer.data.paths import data_dir


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
