"""The language-model task's parts without a training run: the held-out blocks, the model
its config builds, the sampling defaults of a ``LanguageModel``, and a prepared task's
sampler, optimizer, Transformer-XL memory and samples (tiny random models, no training)."""

from __future__ import annotations

import math

import pytest
import torch
from test_language_model import tiny_config  # tests/lm is on sys.path

from torchformer.data.token_file import PackedBlockSampler
from torchformer.models.decoder import DecoderForCausalLM, preset
from torchformer.tasks.language_model import (
    LanguageModelTask,
    build_model,
    val_block_starts,
)
from torchformer.tasks.lm_generator import LanguageModel, LMSettings
from torchformer.text.lm_tokenizers import train_char_tokenizer
from torchformer.train.distributed import World

TEXT = "the king and a rose. my lord and sweet love."


def test_held_out_blocks_are_consecutive_and_a_cap_spreads_them_evenly():
    # 100 tokens, blocks of 16 (+1 target): starts 0..80, every one whole.
    assert val_block_starts(100, 16, None) == [0, 16, 32, 48, 64, 80]
    assert val_block_starts(100, 16, 6) == [0, 16, 32, 48, 64, 80]  # the cap not reached
    assert val_block_starts(100, 16, 2) == [0, 80]  # the first and the last
    assert val_block_starts(100, 16, 3) == [0, 32, 80]  # linspace(0, 5, 3) rounded
    assert val_block_starts(17, 16, None) == [0]  # exactly one block


def test_the_model_config_reaches_the_built_decoder(tmp_path):
    tokenizer = train_char_tokenizer([TEXT])
    cfg = tiny_config(tmp_path, **{"model.d_ff": 48, "model.dropout": 0.2,
                                   "model.attn_impl": "reference"})  # fmt: skip
    model = build_model(cfg, tokenizer)
    c = model.config
    assert (c.d_model, c.n_layers, c.n_heads, c.d_ff) == (32, 2, 4, 48)  # model.d_ff wins
    assert c.dropout == c.attn_dropout == c.embd_dropout == 0.2
    assert c.attn_impl == "reference" and c.max_len == 16  # data.block_size
    assert c.vocab_size == tokenizer.vocab_size and c.bos_id == c.eos_id == tokenizer.eos_id
    llama = build_model(
        tiny_config(tmp_path, **{"model.preset": "llama-tiny", "model.n_kv_heads": 1,
                                 "model.d_model": 96}),
        tokenizer,
    )  # fmt: skip
    assert llama.config.n_kv_heads == 1  # grouped-query attention: one key/value head
    assert llama.config.d_ff == 256  # Llama's SwiGLU width: 8/3 d rounded up to 64 (GPT-2: 4 d)


def test_the_model_config_reaches_a_transformer_xl(tmp_path):
    tokenizer = train_char_tokenizer([TEXT])
    cfg = tiny_config(tmp_path, **{"model.architecture": "transformer_xl", "model.mem_len": 8,
                                   "model.eval_mem_len": 24, "train.sampling": "streams",
                                   "model.n_heads": 2, "model.d_ff": 40, "model.dropout": 0.1,
                                   "model.attn_impl": "reference"})  # fmt: skip
    c = build_model(cfg, tokenizer).config
    assert (c.d_model, c.n_layers, c.n_heads, c.d_ff) == (32, 2, 2, 40)
    assert (c.segment_len, c.mem_len, c.eval_mem_len) == (16, 8, 24)
    assert c.dropout == c.attn_dropout == c.embd_dropout == 0.1
    assert c.attn_impl == "reference" and c.vocab_size == tokenizer.vocab_size
    default_ff = tiny_config(tmp_path, **{"model.architecture": "transformer_xl",
                                          "train.sampling": "streams"})  # fmt: skip
    assert build_model(default_ff, tokenizer).config.d_ff == 4 * 32


def test_the_model_config_reaches_a_transformers_gpt2(tmp_path):
    pytest.importorskip("transformers")
    tokenizer = train_char_tokenizer([TEXT])
    cfg = tiny_config(tmp_path, **{"model.implementation": "transformers", "model.d_ff": 48,
                                   "model.attn_impl": "reference"})  # fmt: skip
    hf = build_model(cfg, tokenizer).config
    assert hf.n_inner == 48 and hf._attn_implementation == "eager"  # the reference attention
    assert hf.vocab_size == tokenizer.vocab_size and hf.n_positions == 16
    sdpa = build_model(tiny_config(tmp_path, **{"model.implementation": "transformers"}), tokenizer)
    assert sdpa.config._attn_implementation == "sdpa"


@pytest.fixture(scope="module")
def random_lm():
    """A random 16-token decoder that never ends early (no end-of-text id)."""
    tokenizer = train_char_tokenizer([TEXT])
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size, max_len=16, bos_id=None, eos_id=None,
                 dropout=0.0, attn_dropout=0.0, embd_dropout=0.0)  # fmt: skip
    return DecoderForCausalLM(cfg).eval(), tokenizer


def greedy_by_hand(model, tokenizer, prompt: str, n: int) -> str:
    ids = tokenizer.backend.encode(prompt, add_special_tokens=False).ids
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([(ids + new)[-16:]])).logits[0, -1]
            new.append(int(logits.argmax()))
    return prompt + tokenizer.decode(new)


def test_greedy_generation_takes_the_most_likely_token_at_every_step(random_lm):
    model, tokenizer = random_lm
    lm = LanguageModel(model, tokenizer, LMSettings(block_size=16))
    assert lm.generate("the ", greedy=True, max_new_tokens=8) == greedy_by_hand(
        model, tokenizer, "the ", 8
    )
    assert lm.generate("the ", greedy=True, max_new_tokens=8, seed=3) == lm.generate(
        "the ", greedy=True, max_new_tokens=8, seed=4
    )  # greedy: no seed matters


def test_sampling_is_the_default_and_takes_the_sidecars_settings(random_lm):
    model, tokenizer = random_lm
    settings = LMSettings(block_size=16, prompt="my ", max_new_tokens=10, seed=5)
    lm = LanguageModel(model, tokenizer, settings)
    text = lm.generate()  # the sidecar's prompt, length and seed
    assert text.startswith("my ") and len(text) == 13
    assert text == lm.generate("my ", seed=5) == lm.generate()
    assert text != lm.generate("my ", seed=6)  # sampled: another seed, another text
    assert text != greedy_by_hand(model, tokenizer, "my ", 10)
    # The sidecar's top_k and temperature are the sampling defaults: top_k 1 is greedy,
    # and so is a very low temperature.
    top1 = LanguageModel(model, tokenizer, LMSettings(block_size=16, max_new_tokens=10, top_k=1))
    assert top1.generate("my ") == greedy_by_hand(model, tokenizer, "my ", 10)
    cold = LMSettings(block_size=16, max_new_tokens=10, temperature=1e-4, top_k=None)
    assert LanguageModel(model, tokenizer, cold).generate("my ") == greedy_by_hand(
        model, tokenizer, "my ", 10
    )


def test_a_prompt_filling_the_context_still_gets_its_new_tokens(random_lm):
    model, tokenizer = random_lm
    lm = LanguageModel(model, tokenizer, LMSettings(block_size=16))
    prompt = "the king and a rose."  # 20 characters: longer than the 16-token context
    assert len(lm.generate(prompt, greedy=True, max_new_tokens=1)) == len(prompt) + 1
    # As many new tokens as the context: one prompt token is kept, 15 are generated.
    assert len(lm.generate(prompt, greedy=True, max_new_tokens=16)) == len(prompt) + 15


@pytest.fixture
def prepared(tmp_path):
    def prepare(**overrides):
        task = LanguageModelTask(tiny_config(tmp_path, **overrides))
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        task.prepare(run_dir, resume=False, main=True)
        return task

    return prepare


def test_the_training_sampler_takes_the_train_settings(prepared):
    task = prepared(**{"train.seed": 7, "train.sampling": "epoch", "train.batch_size": 5})
    sampler = task.train_sampler(World())
    expected = PackedBlockSampler(len(task.files["train"].tokens), 16, 5, seed=7, mode="epoch")
    assert list(sampler) == list(expected) and len(sampler) == len(expected)
    random = prepared(**{"train.batches_per_epoch": 3}).train_sampler(World())
    assert len(list(random)) == 3  # train.batches_per_epoch


def test_the_optimizer_and_schedule_take_the_train_settings(prepared):
    task = prepared(**{"train.lr": 0.02, "train.weight_decay": 0.3,
                       "train.adam_betas": [0.8, 0.9], "train.schedule": "cosine",
                       "train.warmup_steps": 4, "train.min_lr_ratio": 0.5})  # fmt: skip
    optimizer = task.build_optimizer(task.model)
    decays = {g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {0.0, 0.3} and {g["betas"] for g in optimizer.param_groups} == {(0.8, 0.9)}
    scheduler = task.build_scheduler(optimizer, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < lrs[3] < 0.02 and max(lrs) == pytest.approx(0.02)  # 4 warm-up steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # min_lr_ratio * lr


def test_a_transformer_xl_memory_continues_only_across_contiguous_batches(prepared):
    task = prepared(**{"model.architecture": "transformer_xl", "model.mem_len": 16,
                       "train.sampling": "streams"})  # fmt: skip
    model = task.model.eval()

    def loss(indices):
        with torch.no_grad():
            return float(task.batch_loss(model, indices, torch.device("cpu")))

    fresh = loss([16, 116])  # no memory yet
    task.memory = None
    loss([0, 100])
    assert task.next_starts == [16, 116]
    carried = loss([16, 116])  # continues the rows: attends to the remembered segment
    assert carried != pytest.approx(fresh, abs=1e-6)
    assert task.train_state()["next_starts"] == [32, 132]
    task.memory = None
    alone = loss([5, 50])
    loss([0, 100])
    assert loss([5, 50]) == pytest.approx(alone, abs=1e-6)  # elsewhere: a fresh memory


def test_a_short_held_out_split_is_read_as_one_transformer_xl_stream(prepared):
    # Only the first line held out (~20 characters): fewer than two blocks of 16.
    task = prepared(**{"model.architecture": "transformer_xl", "model.mem_len": 16,
                       "train.sampling": "streams", "data.val_every": 1000})  # fmt: skip
    n = len(task.files["val"].tokens)
    assert 17 <= n < 33
    assert task.val_starts == [0] and task.val_stream_len == n - 1  # every token once
    outputs = task.evaluate(task.model.eval(), "val", [0], torch.device("cpu"))
    assert list(outputs) == [0] and outputs[0] > 0
    # the stream's summed loss over its n - 1 predicted tokens (not over a block's 16)
    assert n - 1 != 16
    assert task.summarize("val", outputs)["loss"] == pytest.approx(outputs[0] / (n - 1))


def test_a_sample_follows_the_samples_settings_and_keeps_the_training_mode(prepared, tmp_path):
    task = prepared(**{"samples.prompt": "my ", "samples.max_new_tokens": 5})
    model = task.model.train()
    text = task.write_sample(model, tmp_path / "sample.txt")
    assert model.training  # training goes on after a sample
    assert text.startswith("my ") and len(text) <= 8
    assert (tmp_path / "sample.txt").read_text(encoding="utf-8") == text
    assert task.settings.block_size == 16 and task.settings.tokenizer_kind == "char"


def test_the_built_models_begin_and_end_texts_with_the_tokenizers_end_of_text(tmp_path):
    tokenizer = train_char_tokenizer([TEXT], end_of_text="<|endoftext|>")
    assert tokenizer.eos_id is not None
    for architecture in ("decoder", "transformer_xl"):
        extra = {"model.mem_len": 8, "train.sampling": "streams"}
        cfg = tiny_config(tmp_path, **{"model.architecture": architecture,
                                       **(extra if architecture != "decoder" else {})})  # fmt: skip
        c = build_model(cfg, tokenizer).config
        assert c.bos_id == c.eos_id == tokenizer.eos_id, architecture


def test_a_stream_that_begins_with_a_stop_string_hands_out_nothing(random_lm):
    from torchformer.tasks.lm_generator import TextStream

    _, tokenizer = random_lm
    stream = TextStream(tokenizer, stop=["the"])
    ids = tokenizer.backend.encode("the king", add_special_tokens=False).ids
    assert stream.add(ids) == "" and stream.done and stream.flush() == ""


def test_beam_search_is_deterministic_from_two_beams(random_lm, monkeypatch):
    from torchformer.tasks import lm_generator

    model, tokenizer = random_lm
    lm = LanguageModel(model, tokenizer, LMSettings(block_size=16, max_new_tokens=4))
    seen = []
    real = lm_generator.GenerationConfig.build

    def spy(**options):
        seen.append(options)
        return real(**options)

    monkeypatch.setattr(lm_generator.GenerationConfig, "build", staticmethod(spy))
    lm._options(torch.tensor([[1, 2]]), False, {"num_beams": 2})
    lm._options(torch.tensor([[1, 2]]), False, {})
    assert seen[0]["do_sample"] is False and "seed" not in seen[0]  # beams: no sampling
    assert seen[1]["do_sample"] is True  # one beam: the sidecar's sampling


def test_an_empty_prompt_starts_from_end_of_text(random_lm):
    _, tokenizer = random_lm
    chars = train_char_tokenizer([TEXT], end_of_text="<|endoftext|>")
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=chars.vocab_size, max_len=16, bos_id=None, eos_id=None)
    lm = LanguageModel(DecoderForCausalLM(cfg).eval(), chars, LMSettings(block_size=16))
    assert chars.eos_id not in (None, 0)
    assert lm._prompt_ids("").tolist() == [[chars.eos_id]]
    plain = LanguageModel(DecoderForCausalLM(cfg).eval(), tokenizer, LMSettings(block_size=16))
    assert tokenizer.eos_id is None and plain._prompt_ids("").tolist() == [[0]]


def test_a_language_model_has_no_test_split_to_evaluate(prepared):
    task = prepared()
    assert task.split_size("val") == len(task.val_starts) > 0
    assert task.split_size("test") == 0


def test_a_fresh_run_trains_its_own_tokenizer_over_one_left_in_the_run(tmp_path):
    from torchformer.tasks.language_model import TOKENIZER_FILE

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train_char_tokenizer(["qqq zzz"]).save(run_dir / TOKENIZER_FILE)  # a stale one
    fresh = LanguageModelTask(tiny_config(tmp_path))
    fresh.prepare(run_dir, resume=False, main=True)
    vocabulary = fresh.tokenizer.backend.get_vocab()
    clean = LanguageModelTask(tiny_config(tmp_path))
    (tmp_path / "clean").mkdir()
    clean.prepare(tmp_path / "clean", resume=False, main=True)
    assert vocabulary == clean.tokenizer.backend.get_vocab()  # trained on this run's corpus
    assert vocabulary != train_char_tokenizer(["qqq zzz"]).backend.get_vocab()
    resumed = LanguageModelTask(tiny_config(tmp_path))
    resumed.prepare(run_dir, resume=True, main=True)  # a resume keeps the saved vocabulary
    assert resumed.tokenizer.backend.get_vocab() == vocabulary


def test_the_token_cache_tells_apart_the_held_out_settings(tmp_path):
    """The cached token files are keyed by how the corpus was split: another
    ``data.val_every`` over the same file and cache re-tokenizes, it does not reuse."""
    sizes = {}
    for every in (2, 3):
        task = LanguageModelTask(tiny_config(tmp_path, **{"data.val_every": every}))
        run_dir = tmp_path / f"run{every}"
        run_dir.mkdir()
        task.prepare(run_dir, resume=False, main=True)
        sizes[every] = {name: len(f.tokens) for name, f in task.files.items()}
    assert sizes[2]["val"] > sizes[3]["val"] and sizes[2]["train"] < sizes[3]["train"]


def test_a_transformers_gpt2_ends_texts_with_the_tokenizers_end_of_text_and_is_gpt2_only(tmp_path):
    pytest.importorskip("transformers")
    tokenizer = train_char_tokenizer([TEXT], end_of_text="<|endoftext|>")
    cfg = tiny_config(tmp_path, **{"model.implementation": "transformers"})
    hf = build_model(cfg, tokenizer).config
    assert hf.bos_token_id == hf.eos_token_id == tokenizer.eos_id  # not GPT-2's 50256
    llama = tiny_config(tmp_path, **{"model.implementation": "transformers",
                                     "model.preset": "llama-tiny"})  # fmt: skip
    with pytest.raises(ValueError, match="transformers is available for GPT-2 presets only"):
        build_model(llama, tokenizer)


def test_a_batch_counts_every_position_of_its_blocks_and_the_perplexity_is_capped(prepared):
    task = prepared()
    assert task.batch_units([4, 9, 2]) == 3 * 16  # data.block_size tokens a block
    blocks = len(task.val_starts)
    huge = task.summarize("val", dict.fromkeys(range(blocks), 1000.0 * 16))  # loss 1000
    assert huge["loss"] == pytest.approx(1000.0) and huge["ppl"] == pytest.approx(math.exp(50))


def test_the_unlabelled_imdb_source_strips_html_and_holds_out_every_nth_review(
    tmp_path, monkeypatch
):
    from torchformer.tasks.language_model import DataConfig, corpora

    folder = tmp_path / "imdb" / "aclImdb" / "train" / "unsup"
    folder.mkdir(parents=True)
    reviews = ["One.<br /><br />Two.", "Three.", "Four.<br />Five.", "Six."]
    for i, review in enumerate(reviews):
        (folder / f"{i}_0.txt").write_text(review, encoding="utf-8")
    monkeypatch.setenv("TORCHFORMER_DATA", str(tmp_path))
    parts = corpora(DataConfig(source="imdb-unsup", val_every=2))
    assert [text for _, text in parts["val"]] == ["One. Two.", "Four. Five."]
    assert [text for _, text in parts["train"]] == ["Three.", "Six."]
    # each part names its own token cache: train and held-out never share one
    assert (parts["train"].name, parts["val"].name) == ("imdb-unsup-train", "imdb-unsup-val")
    assert parts["val"].settings["held_out"] is True and parts["val"].settings["val_every"] == 2
    assert parts["train"].settings["held_out"] is False
    assert parts["train"].fingerprint() != parts["val"].fingerprint()


def test_a_language_model_without_settings_takes_the_models_context_and_names_bad_text(random_lm):
    model, tokenizer = random_lm
    lm = LanguageModel(model, tokenizer)
    assert lm.settings.block_size == model.config.max_len == 16
    text = "the king and a rose. " * 3 + "ZQ"  # two characters the vocabulary lacks
    with pytest.raises(ValueError) as error:
        lm._ids(text)
    assert str(error.value).startswith(
        f"cannot tokenize {text[:40]!r} (characters not in the vocabulary: ['Q', 'Z']): "
    )


def test_the_manifest_records_the_training_tokens_key_and_the_models_size(prepared):
    task = prepared()
    manifest = task.manifest()
    assert manifest["data_fingerprint"] == task.files["train"].key
    extra = manifest["extra"]
    assert extra["parameters"] == sum(p.numel() for p in task.model.parameters()) > 0
    assert extra["vocab_size"] == task.tokenizer.vocab_size
    assert extra["tokens"] == {k: len(f.tokens) for k, f in task.files.items()}
