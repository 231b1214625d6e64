"""Chunk-and-pool inside the encoder classifier, and longer position tables."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.models.encoder import EncoderForSequenceClassification, preset
from torchformer.models.long_document import extend_position_embeddings, split_into_chunks

CLS, SEP, PAD = 101, 102, 0


def document(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [CLS, *torch.randint(200, 900, (n,), generator=g).tolist(), SEP]


def padded(docs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, docs))
    ids = torch.tensor([d + [PAD] * (width - len(d)) for d in docs])
    return ids, (ids != PAD).long()


def chunked(**overrides) -> EncoderForSequenceClassification:
    torch.manual_seed(0)
    values = dict(
        long_document="chunks",
        chunk_length=10,
        chunk_stride=6,
        cls_id=CLS,
        sep_id=SEP,
        pad_id=PAD,
        pooling="mean",
        dropout=0.0,
        attn_dropout=0.0,
    )
    return EncoderForSequenceClassification(preset("tiny", **{**values, **overrides})).eval()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 14, 15, 23, 40])
def test_the_windows_cover_every_token_once_in_order_and_stop_at_the_end(n):
    ids, mask = padded([document(n), document(45, seed=1)])  # padded to the longer one
    chunks, chunk_mask, exists = split_into_chunks(
        ids, mask, length=10, stride=6, cls_id=CLS, sep_id=SEP, pad_id=PAD
    )
    C = exists.size(1)
    rows = [
        chunks.view(2, C, 10)[0, c][chunk_mask.view(2, C, 10)[0, c].bool()].tolist()
        for c in range(C)
        if exists[0, c]
    ]
    tokens = ids[0, 1 : n + 1].tolist()
    assert all(r[0] == CLS and r[-1] == SEP for r in rows)
    pieces = [r[1:-1] for r in rows]
    assert pieces[0] == tokens[:8]
    for c, piece in enumerate(pieces):  # window c starts at token 6c
        assert piece == tokens[6 * c : 6 * c + 8]
    assert len(pieces) == max(1, -(-(n - 8) // 6) + 1)  # no window past the end
    assert not chunk_mask.view(2, C, 10)[0][~exists[0]].any()  # absent chunks are all padding


def test_a_document_within_one_chunk_gets_the_truncating_model_s_logits():
    model = chunked()
    plain = EncoderForSequenceClassification(replace(model.config, long_document="truncate"))
    plain.load_state_dict(model.state_dict())
    ids, mask = padded([document(8)])
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, attention_mask=mask).logits,
            plain.eval()(ids, attention_mask=mask).logits,
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_a_long_document_pools_its_separately_encoded_chunks(pooling):
    model = chunked(chunk_pooling=pooling)
    plain = EncoderForSequenceClassification(replace(model.config, long_document="truncate"))
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("chunk_scorer")}
    )
    plain.eval()
    doc = document(20)
    tokens = doc[1:-1]
    pieces = [tokens[s : s + 8] for s in (0, 6, 12)]  # 20 tokens: windows at 0, 6, 12
    with torch.no_grad():
        vectors = torch.stack(
            [plain(torch.tensor([[CLS, *p, SEP]])).pooled[0] for p in pieces]
        )  # (3, D)
        if pooling == "mean":
            pooled = vectors.mean(0)
        elif pooling == "max":
            pooled = vectors.amax(0)
        else:
            pooled = (model.chunk_scorer(vectors).softmax(0) * vectors).sum(0)
        expected = plain.classifier(pooled)
        ids, mask = padded([doc])
        got = model(ids, attention_mask=mask).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_document_s_logits_do_not_depend_on_its_batch():
    model = chunked(chunk_pooling="attention")
    docs = [document(5), document(33, seed=1), document(17, seed=2)]
    with torch.no_grad():
        together = model(*padded(docs)[:1], attention_mask=padded(docs)[1]).logits
        alone = torch.cat(
            [model(padded([d])[0], attention_mask=padded([d])[1]).logits for d in docs]
        )
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_chunk_settings_and_the_chunk_scorer_are_saved_and_read_back(tmp_path):
    model = chunked(chunk_pooling="attention")
    save_pretrained(model, tmp_path / "m")
    loaded, report = load_pretrained(tmp_path / "m", task="classification")
    assert not report.new_keys
    for name in (
        "long_document",
        "chunk_length",
        "chunk_stride",
        "chunk_pooling",
        "cls_id",
        "sep_id",
    ):
        assert getattr(loaded.config, name) == getattr(model.config, name)
    ids, mask = padded([document(30)])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
        )


def test_bad_chunk_settings_are_refused():
    with pytest.raises(ValueError, match="cls_id and sep_id"):
        chunked(cls_id=None)
    with pytest.raises(ValueError, match="chunk_length"):
        chunked(chunk_length=500)  # longer than the tiny preset's 128 positions


def test_extended_positions_repeat_the_trained_table():
    table = torch.nn.Embedding(4, 3)
    grown = extend_position_embeddings(table, 10)
    assert grown.weight.shape == (10, 3)
    assert torch.equal(grown.weight[4:8], table.weight) and torch.equal(
        grown.weight[8:], table.weight[:2]
    )
    assert extend_position_embeddings(table, 3) is table
