"""The attention bench's arithmetic: growth exponents and the crossover length."""

from __future__ import annotations

import pytest

from torchformer.bench.attention import AttentionBench, AttentionBenchSettings, Cell, measure_cell


def bench(dense: dict[int, float | None], window: dict[int, float]) -> AttentionBench:
    b = AttentionBench(AttentionBenchSettings(lengths=tuple(sorted(window)), fit_from=2048))
    for t, sec in dense.items():
        b.cells.append(
            Cell("dense_sdpa", t, sec, 1.0) if sec else Cell("dense_sdpa", t, error="timeout")
        )
    b.cells += [Cell("sliding_window", t, sec, 1.0) for t, sec in window.items()]
    return b


def test_exponents_are_the_log_log_slopes_over_the_long_lengths():
    lengths = [512, 1024, 2048, 4096, 8192]
    b = bench({t: 1e-9 * t**2 for t in lengths}, {t: 3e-6 * t for t in lengths})
    assert b.exponent("dense_sdpa") == pytest.approx(2.0)
    assert b.exponent("sliding_window") == pytest.approx(1.0)


def test_the_crossover_is_where_the_window_wins_from_then_on():
    b = bench(
        {512: 1.0, 1024: 2.0, 2048: 3.0, 4096: 8.0}, {512: 2.0, 1024: 1.0, 2048: 4.0, 4096: 5.0}
    )
    assert b.crossover("sliding_window") == 4096  # 1024 was a win, but 2048 was not
    b = bench({512: 1.0, 1024: 3.0, 2048: None}, {512: 2.0, 1024: 2.0, 2048: 3.0})
    assert b.crossover("sliding_window") == 1024  # dense failed at 2048: a win
    b = bench({512: 1.0}, {512: 2.0})
    assert b.crossover("sliding_window") is None


def test_one_cell_measures_its_time_and_peak_and_refuses_an_unknown_kind():
    small = measure_cell("sliding_window", 256, AttentionBenchSettings(repeats=1, window=16))
    assert small.seconds > 0 and small.peak_mib >= 0 and small.error is None
    with pytest.raises(ValueError, match="unknown attention kind"):
        measure_cell("reformer", 64, AttentionBenchSettings(repeats=1))


@pytest.mark.parametrize("kind", ["block_sparse", "lsh"])
def test_every_kind_has_a_cell(kind):
    s = AttentionBenchSettings(repeats=1, block_size=16, random_blocks=1, chunk_size=16)
    cell = measure_cell(kind, 128, s)
    assert cell.seconds > 0 and cell.error is None
