"""The language-model task on the one loop: tiny runs on a made-up corpus (tier 1) and on
Tiny Shakespeare (tier 3)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import torchformer
from torchformer.cli import main
from torchformer.config import ConfigError, load_config
from torchformer.tasks import language_model
from torchformer.tasks.language_model import LanguageModelConfig, train
from torchformer.tasks.lm_generator import LanguageModel
from torchformer.train.checkpoint import load_checkpoint

WORDS = ["the king", "a rose", "my lord", "sweet love", "good night", "fair queen"]


def tiny_corpus(path: Path, lines: int = 400) -> Path:
    if path.is_file():  # rewriting it would change its fingerprint (mtime)
        return path
    rng = random.Random(0)
    text = "\n".join(f"{rng.choice(WORDS)} and {rng.choice(WORDS)}." for _ in range(lines))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, **overrides) -> LanguageModelConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    values = {
        "run_dir": str(tmp_path / "run"),
        "data.source": str(tiny_corpus(tmp_path / "corpus.txt")),
        "data.split": "line",
        "data.block_size": 16,
        "data.cache_dir": str(tmp_path / "cache"),
        "model.d_model": 32,
        "model.n_layers": 2,
        "model.n_heads": 4,
        "train.batch_size": 8,
        "train.batches_per_epoch": 20,
        "train.epochs": 3,
        "train.eval_every": 20,
        "train.warmup_steps": 5,
        "train.lr": 1e-2,
        "train.progress": False,
        "train.threads": 1,
        "samples.max_new_tokens": 12,
        "samples.prompt": "the ",
    }
    values.update(overrides)
    return load_config(LanguageModelConfig, None, values)


def records(run_dir: Path, split: str) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def test_a_char_model_learns_and_its_run_generates(tmp_path, capsys):
    run = train(tiny_config(tmp_path))
    val = records(run, "val")
    assert [r["step"] for r in val] == [20, 40, 60]
    assert (
        val[-1]["loss"] < 0.7 * val[0]["loss"] and val[-1]["loss"] < 1.3
    )  # it learned (ln V ~ 3.2)
    assert val[-1]["bpc"] == pytest.approx(val[-1]["loss"] / 0.6931471805599453)
    best = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert best["loss"] == pytest.approx(min(r["loss"] for r in val), rel=1e-4)
    lm = torchformer.load(run)
    assert isinstance(lm, LanguageModel)
    assert lm.model.config.d_ff == 4 * 32  # GPT-2's feed-forward width, 4 d
    assert lm.model.config.attn_impl != "reference"
    assert torchformer.load(run, attn_impl="reference").model.config.attn_impl == "reference"
    assert language_model.load(run / "best").model.config.d_ff == 4 * 32  # a model directory
    text = lm.generate("the ", max_new_tokens=10, seed=1)
    assert text.startswith("the ") and len(text) == 14  # a character model: 10 characters
    assert text == lm.generate("the ", max_new_tokens=10, seed=1)  # seeded: reproducible
    assert set(text) <= set("".join(WORDS) + " .\nand")  # only characters it was trained on
    samples = sorted((run / "samples").glob("*.txt"))
    assert len(samples) >= 2 and (run / "samples" / "best.txt").read_text()
    losses = [r["loss"] for r in val]
    saves = sum(loss < min(losses[:i], default=math.inf) for i, loss in enumerate(losses))
    numbered = sorted(p.name for p in (run / "samples").glob("best-*.txt"))  # one per best/
    assert numbered == [f"best-{i:03d}.txt" for i in range(1, saves + 1)]
    final = (run / "samples" / "best.txt").read_text(encoding="utf-8")
    assert final.startswith("the ") and len(final) <= 4 + 12  # samples.prompt, max_new_tokens
    # Streaming hands out the same text piece by piece; a stop string ends it before itself.
    pieces = list(lm.stream("the ", max_new_tokens=30, seed=2))
    assert len(pieces) > 1 and "the " + "".join(pieces) == lm.generate(
        "the ", max_new_tokens=30, seed=2
    )
    long = lm.generate("the ", max_new_tokens=40, greedy=True)
    assert " and " in long[4:]  # the corpus's lines are "X and Y."
    cut = lm.generate("the ", max_new_tokens=40, greedy=True, stop=[" and "])
    assert cut == long[: long.index(" and ", 4)]
    # A prompt longer than the 16-token context keeps its end and still gets its tokens.
    long_prompt = "the king and a rose. " * 3
    assert len(lm.generate(long_prompt, max_new_tokens=10, seed=1)) == len(long_prompt) + 10
    beams = lm.generate("the ", max_new_tokens=8, num_beams=3)
    assert beams.startswith("the ") and 4 < len(beams) <= 12
    # The command line streams the same text.
    assert (
        main(
            [
                "generate",
                str(run),
                "the ",
                "--greedy",
                "--max-new-tokens",
                "40",
                "--stop",
                " and ",
                "--stream",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == cut + "\n"
    assert main(["generate", str(run), "the ", "--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err
    # So does the HTTP server.
    testclient = pytest.importorskip("fastapi.testclient")
    from torchformer.serve.app import create_app

    with testclient.TestClient(create_app(lm)) as client:
        body = {"prompt": "the ", "greedy": True, "max_new_tokens": 40, "stop": [" and "]}
        assert client.post("/generate", json=body).json()["text"] == cut


def test_resume_gives_the_weights_of_an_unbroken_run(tmp_path):
    unbroken = train(tiny_config(tmp_path / "a", **{"train.epochs": 2}))
    cfg = tiny_config(tmp_path / "b", **{"train.epochs": 2, "train.checkpoint_every": 5})
    train(cfg, stop_at_step=25)  # mid-epoch
    resumed = train(cfg, resume=True)
    a = load_checkpoint(unbroken / "checkpoints" / "step-000040.pt")["model"]
    b = load_checkpoint(resumed / "checkpoints" / "step-000040.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The resumed run numbers its samples on from the ones written before the stop.
    names = [
        sorted(p.name for p in (r / "samples").glob("best-*.txt")) for r in (unbroken, resumed)
    ]
    assert names[0] == names[1] and len(names[0]) == 2


def test_token_files_are_reused_by_a_second_run(tmp_path):
    first = train(tiny_config(tmp_path / "a", **{"train.epochs": 1}))
    cache = Path(tiny_config(tmp_path / "a").data.cache_dir)
    made = {p: p.stat().st_mtime_ns for p in cache.glob("*.bin")}
    assert len(made) == 2  # train and val
    train(tiny_config(tmp_path / "a", **{"train.epochs": 1, "run_dir": str(tmp_path / "r2")}))
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.bin")} == made
    assert json.loads((first / "manifest.json").read_text())["extra"]["tokens"]["train"] > 0


@pytest.mark.data
def test_shakespeare_char_from_the_real_file(tmp_path):
    try:
        from torchformer.data.corpus import find_tinyshakespeare

        find_tinyshakespeare()
    except FileNotFoundError as e:
        pytest.skip(f"Tiny Shakespeare absent (set TORCHFORMER_DATA): {e}")
    shipped = Path(torchformer.__file__).parent / "configs" / "shakespeare-char.yaml"
    cfg = load_config(
        LanguageModelConfig,
        shipped,
        {
            "run_dir": str(tmp_path / "run"),
            "data.cache_dir": str(tmp_path / "cache"),
            "train.max_steps": 5,
            "train.warmup_steps": 2,
            "train.eval_every": 5,
            "data.val_max_blocks": 20,
            "train.progress": False,
            "samples.max_new_tokens": 5,
        },
    )
    run = train(cfg)
    manifest = json.loads((run / "manifest.json").read_text())["extra"]
    assert manifest["tokens"] == {"train": 1_003_854, "val": 111_540}
    assert manifest["vocab_size"] == 65
    assert records(run, "val")[-1]["loss"] < 4.2  # ln 65 = 4.17: a start


@pytest.mark.parity
def test_a_model_trained_as_transformers_gpt2_loads_as_ours_with_equal_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config(tmp_path, **{"train.epochs": 1, "model.implementation": "transformers"})
    run = train(cfg)
    ours = torchformer.load(run).model
    theirs = transformers.GPT2LMHeadModel.from_pretrained(run / "best").eval()
    ids = torch.randint(
        0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, theirs(ids).logits, atol=1e-5)
    assert records(run, "val")  # the loop trained and validated it like ours
    c = theirs.config  # every dropout of the config, GPT-2's d_ff = 4 d
    assert c.resid_pdrop == c.attn_pdrop == c.embd_pdrop == cfg.model.dropout
    assert (c.n_embd, c.n_layer, c.n_head) == (32, 2, 4)  # model.d_model / n_layers / n_heads
    assert c.activation_function == ours.config.activation
    assert c.n_inner in (None, 4 * 32) and c.n_positions == 16


def test_a_split_without_one_block_is_an_error_naming_the_settings(tmp_path):
    from torchformer.data.records import DataError

    one = tmp_path / "one.txt"
    one.write_text("a single short document\n", encoding="utf-8")
    cfg = tiny_config(tmp_path, **{"data.source": str(one), "data.split": "file"})
    with pytest.raises(DataError, match=r"data.split='file'; every data.val_every=10-th") as e:
        train(cfg)
    assert e.value.file == str(one) and e.value.field == "data.source"


def test_a_split_shorter_than_one_block_is_an_error_naming_the_source(tmp_path):
    from torchformer.data.records import DataError

    corpus = tmp_path / "short.txt"  # every 10th line held out: 2 lines, 6 characters
    corpus.write_text("".join(f"{'ab' if i % 10 == 9 else 'abcdefgh'}\n" for i in range(20)))
    cfg = tiny_config(tmp_path, **{"data.source": str(corpus)})
    with pytest.raises(DataError, match=r"the val split has \d+ tokens, fewer than one block of "
                                        r"data.block_size \+ 1 = 17") as e:  # fmt: skip
        train(cfg)
    assert e.value.file == str(corpus) and e.value.field == "data.source"


def test_a_byte_level_bpe_model_learns_its_vocabulary_from_the_training_split(tmp_path):
    cfg = tiny_config(tmp_path, **{"tokenizer.kind": "bpe", "tokenizer.vocab_size": 300,
                                   "tokenizer.min_frequency": 1, "train.epochs": 1,
                                   "model.d_model": 64})  # fmt: skip
    run = train(cfg)
    lm = torchformer.load(run)
    assert 256 < lm.tokenizer.vocab_size <= 300  # the 256 bytes and merges of the corpus
    assert lm.model.config.vocab_size == lm.tokenizer.vocab_size
    assert lm.model.config.d_ff == 4 * 64  # GPT-2's feed-forward width
    assert len(lm.tokenizer.encode("the king and a rose.")) < len("the king and a rose.")
    best = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    logged = records(run, "best_val")[-1]  # finish() logs what it wrote
    assert logged["loss"] == pytest.approx(best["loss"]) and best["blocks"] > 0
    assert best["precision"] == "fp32" and logged["epoch"] == 1  # one epoch completed
    assert best["ppl"] == pytest.approx(math.exp(best["loss"]))
    capped = train(tiny_config(tmp_path / "capped", **{"data.val_max_blocks": 2,
                                                       "train.epochs": 1}))  # fmt: skip
    assert json.loads((capped / "eval" / "val" / "metrics.json").read_text())["blocks"] == 2
    assert (run / "samples" / "best.txt").read_text(encoding="utf-8")


def test_a_prompt_the_vocabulary_cannot_spell_samples_from_nothing_with_a_warning(tmp_path, caplog):
    cfg = tiny_config(tmp_path, **{"samples.prompt": "\u03a9 ", "train.epochs": 1})
    with caplog.at_level("WARNING", logger="torchformer.tasks.language_model"):
        run = train(cfg)
    assert "sampling without a prompt" in caplog.text
    assert "characters not in the vocabulary: ['\u03a9']" in caplog.text
    sample = (run / "samples" / "best.txt").read_text(encoding="utf-8")
    assert sample and "\u03a9" not in sample


def txl_config(tmp_path: Path, mem_len: int = 16, **overrides) -> LanguageModelConfig:
    values = {
        "model.architecture": "transformer_xl",
        "model.mem_len": mem_len,
        "train.sampling": "streams",
        "train.batch_size": 4,
        "data.val_streams": 3,
    }
    return tiny_config(tmp_path, **{**values, **overrides})


def test_transformer_xl_learns_reads_validation_in_streams_and_loads(tmp_path):
    cfg = txl_config(tmp_path, **{"train.epochs": 2})
    run = train(cfg)
    val = records(run, "val")
    assert val[-1]["loss"] < 0.7 * val[0]["loss"]
    task_tokens = json.loads((run / "manifest.json").read_text())["extra"]["tokens"]["val"]
    best = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert best["blocks"] == 3  # the held-out text as 3 ordered streams
    lm = torchformer.load(run)
    assert type(lm.model).__name__ == "TransformerXLForCausalLM"
    assert lm.model.config.mem_len == 16 and lm.model.config.segment_len == 16
    assert (lm.model.config.d_model, lm.model.config.n_layers) == (32, 2)
    assert lm.model.config.bos_id == lm.model.config.eos_id == lm.tokenizer.eos_id
    text = lm.generate("the ", max_new_tokens=30, seed=0)
    assert len(text) == 34 and text == lm.generate("the ", max_new_tokens=30, seed=0)
    assert lm.perplexity("the king and a rose. " * 3) < 10  # segment by segment
    assert task_tokens > 3 * 16


def test_transformer_xl_resume_restores_the_memory_exactly(tmp_path):
    unbroken = train(txl_config(tmp_path / "a", **{"train.epochs": 1}))
    cfg = txl_config(tmp_path / "b", **{"train.epochs": 1, "train.checkpoint_every": 5})
    train(cfg, stop_at_step=10)  # mid-epoch, the memory full
    resumed = train(cfg, resume=True)
    last = sorted((unbroken / "checkpoints").glob("step-*.pt"))[-1].name
    a = load_checkpoint(unbroken / "checkpoints" / last)
    b = load_checkpoint(resumed / "checkpoints" / last)
    assert a["task"]["memory"] and all(
        torch.equal(a["task"]["memory"][k], b["task"]["memory"][k]) for k in a["task"]["memory"]
    )
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_memory_needs_ordered_streams(tmp_path):
    with pytest.raises(ConfigError, match=r"mem_len=16 needs train\.sampling: streams"):
        txl_config(tmp_path, **{"train.sampling": "random"})
    with pytest.raises(ConfigError, match=r"mem_len=1 needs train\.sampling: streams"):
        txl_config(tmp_path, **{"train.sampling": "random", "model.mem_len": 1})  # the boundary
    assert txl_config(tmp_path, **{"train.sampling": "random", "model.mem_len": 0})  # no memory
    with pytest.raises(ConfigError, match="transformer_xl settings"):
        tiny_config(tmp_path, **{"model.mem_len": 8})


def test_a_sliding_window_language_model_trains_and_saves_as_mistral(tmp_path):
    cfg = tiny_config(
        tmp_path, **{"model.preset": "llama-tiny", "model.sliding_window": 6, "train.epochs": 1}
    )
    run = train(cfg)
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["sliding_window"] == 6
    lm = torchformer.load(run)
    assert lm.model.config.sliding_window == 6
    assert lm.model.config.d_ff == 128  # Llama's SwiGLU width: 8/3 d rounded up to 64
    text = lm.generate("the ", max_new_tokens=20, seed=0)  # (may end early at end-of-text)
    assert text.startswith("the ") and 4 < len(text) <= 24


def test_the_token_cache_defaults_to_the_data_directory_else_the_users_cache(tmp_path, monkeypatch):
    from torchformer.tasks.language_model import token_cache_dir

    assert token_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.setenv("TORCHFORMER_DATA", str(tmp_path / "data"))
    preferred = token_cache_dir(None)
    assert preferred == (tmp_path / "data" / "cache" / "tokens").resolve() and preferred.is_dir()
    assert token_cache_dir(None) == preferred  # the next run finds it there again
    blocked = tmp_path / "a-file"  # the data "directory" cannot hold a cache
    blocked.write_text("not a directory")
    monkeypatch.setenv("TORCHFORMER_DATA", str(blocked))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert token_cache_dir(None) == tmp_path / "home" / ".cache" / "torchformer" / "tokens"
