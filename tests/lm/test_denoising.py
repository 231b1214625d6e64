"""BART's text infilling: the span corruption, and the denoising task on the one loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_masked_lm import tiny_config as masked_lm_config  # tests/lm is on sys.path

import torchformer
from torchformer.checkpoints import load_pretrained
from torchformer.data.masking import InfillingConfig, infill_spans
from torchformer.tasks.denoising import Denoiser, DenoisingConfig, train
from torchformer.train.checkpoint import load_checkpoint

MASK = 3


def test_infilling_masks_about_the_ratio_in_spans_each_replaced_by_one_mask():
    g = torch.Generator().manual_seed(0)
    ids = list(range(10, 1010))  # distinct tokens: what was removed can be counted
    out = infill_spans(ids, config=InfillingConfig(), mask_id=MASK, generator=g)
    kept = [i for i in out if i != MASK]
    assert kept == sorted(kept) and set(kept) <= set(ids)  # order kept, nothing invented
    removed = len(ids) - len(kept)
    assert removed == 300  # exactly the ratio
    masks = out.count(MASK)
    assert 0.3 * len(ids) / 3 / 2 < masks < 0.3 * len(ids)  # spans of mean length ~3
    again = infill_spans(
        ids, config=InfillingConfig(), mask_id=MASK, generator=torch.Generator().manual_seed(0)
    )
    assert again == out
    with pytest.raises(ValueError, match="ratio"):
        InfillingConfig(ratio=1.0)


def tiny_config(tmp_path: Path, **overrides) -> DenoisingConfig:
    values = {"model.preset": "bart-tiny", "tokenizer.vocab_size": 120, "train.lr": 3e-3}
    return masked_lm_config(tmp_path, DenoisingConfig, **{**values, **overrides})


def test_denoising_learns_writes_a_bart_directory_resumes_and_reconstructs(tmp_path, monkeypatch):
    run = train(tiny_config(tmp_path / "a"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6] and val[-1]["loss"] < val[0]["loss"]
    assert val[-1]["target_tokens"] == 8 * 23  # 22 corpus tokens + [SEP] per held-out block
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["model_type"] == "bart" and (run / "best" / "denoising.json").is_file()
    model, _ = load_pretrained(run / "best", task="seq2seq_lm")
    assert model.config.flavour == "bart"
    denoiser = torchformer.load(run)
    assert isinstance(denoiser, Denoiser)
    assert denoiser.model.config.attn_impl != "reference"  # overrides reach the loaded model
    assert torchformer.load(run, attn_impl="reference").model.config.attn_impl == "reference"
    t = denoiser.tokenizer  # [SEP] ends a sequence and starts the decoder; the vocabulary's [PAD]
    assert model.config.eos_id == model.config.decoder_start_id == t.sep_id != 2  # (BART's: 2)
    assert model.config.pad_id == t.pad_id != 1 and model.config.vocab_size == t.vocab_size
    settings = json.loads((run / "best" / "denoising.json").read_text())
    assert settings["block_size"] == 24 and settings["base"] == "scratch"
    # Six steps do not make a denoiser; the path from text to generated text must work.
    source = denoiser.tokenizer.backend.encode("the king and [MASK].", add_special_tokens=False).ids
    assert denoiser.tokenizer.mask_id in source  # the mask is one token, not spelled out
    assert isinstance(
        denoiser.reconstruct("the king and [MASK].", max_new_tokens=8, num_beams=2), str
    )
    import torchformer.tasks.denoising as denoising

    seen, real = {}, denoising.generate
    monkeypatch.setattr(
        denoising,
        "generate",
        lambda model, ids, **o: seen.update(o, ids=ids.tolist()) or real(model, ids, **o),
    )
    denoiser.reconstruct("the king and [MASK].", max_new_tokens=5, num_beams=3)
    assert seen == {"max_new_tokens": 5, "num_beams": 3, "ids": [[t.cls_id, *source, t.sep_id]]}
    denoiser.reconstruct("the king and [MASK].")
    assert (seen["max_new_tokens"], seen["num_beams"]) == (64, 4)  # the defaults
    # Resume mid-run: the same corruption, the same weights. (WordPiece training is not
    # reproducible across processes: the second run takes the first one's vocabulary.)
    vocab = str(run / "tokenizer.json")
    cfg = tiny_config(tmp_path / "b", **{"train.checkpoint_every": 2, "tokenizer.path": vocab})
    train(cfg, stop_at_step=4)
    resumed = train(cfg, resume=True)
    a = load_checkpoint(run / "checkpoints" / "step-000006.pt")["model"]
    b = load_checkpoint(resumed / "checkpoints" / "step-000006.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Continued from the run's best/: its weights are the start (the first validation of
    # the new run is where the old one ended, not where a fresh model starts).
    more = train(tiny_config(tmp_path / "c", **{"model.base": str(run / "best")}))
    assert json.loads((more / "best" / "denoising.json").read_text())["base"] == str(run / "best")
    first = [json.loads(x) for x in (more / "metrics.jsonl").read_text().splitlines()]
    first_val = next(r for r in first if r["split"] == "val")
    assert first_val["loss"] < val[0]["loss"]
