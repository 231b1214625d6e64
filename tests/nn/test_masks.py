"""Boolean keep-masks: padding, causal (with cache offsets), their combination."""

from __future__ import annotations

import torch

from torchformer.nn import causal_mask, causal_padding_mask, combine_masks, padding_mask


def test_padding_mask_shape_and_values():
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # (B, S)
    m = padding_mask(attention_mask)
    assert m.shape == (2, 1, 1, 4) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, True, False], [True, False, False, False]]
    # Boolean input works the same.
    assert torch.equal(padding_mask(attention_mask.bool()), m)


def test_causal_mask_square_is_lower_triangular():
    m = causal_mask(4)
    assert m.shape == (1, 1, 4, 4) and m.dtype == torch.bool
    assert torch.equal(m[0, 0], torch.tril(torch.ones(4, 4, dtype=torch.bool)))


def test_causal_mask_with_offset_for_cached_decoding():
    # 2 new queries after 3 cached positions: they sit at absolute positions 3 and 4.
    m = causal_mask(2, 5)
    assert m.shape == (1, 1, 2, 5)
    assert m[0, 0].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    # It is always the last T rows of the full S x S causal mask.
    for t, s in [(1, 1), (1, 6), (3, 7), (7, 7)]:
        assert torch.equal(causal_mask(t, s), causal_mask(s)[:, :, s - t :, :])


def test_causal_padding_mask_combines_both():
    attention_mask = torch.tensor([[1, 1, 1], [0, 1, 1]])  # row 1 left-padded
    m = causal_padding_mask(attention_mask, 3)
    assert m.shape == (2, 1, 3, 3)
    expected = causal_mask(3) & padding_mask(attention_mask)
    assert torch.equal(m, expected)
    assert m[1, 0].tolist() == [[False, False, False], [False, True, False], [False, True, True]]
    # Cached step: one query over 4 keys.
    m = causal_padding_mask(torch.tensor([[0, 1, 1, 1]]), 1, 4)
    assert m.shape == (1, 1, 1, 4) and m[0, 0, 0].tolist() == [False, True, True, True]
    assert torch.equal(causal_padding_mask(None, 3), causal_mask(3))


def test_combine_masks_is_logical_and_ignoring_none():
    a = padding_mask(torch.tensor([[1, 1, 0]]))
    c = causal_mask(3)
    assert combine_masks() is None and combine_masks(None, None) is None
    assert combine_masks(None, a) is a
    assert torch.equal(combine_masks(a, None, c), a & c)
    assert combine_masks(a, c).shape == (1, 1, 3, 3)
