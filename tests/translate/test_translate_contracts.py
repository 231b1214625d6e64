"""The translation task's contracts below the end-to-end runs: the output budget, the
options ``translate()`` hands to the decoder, split evaluation (limit, batch size, greedy
then beam, ``decode_s``), overrides of ``load``, the model built from the config, where
the tokenizers and pairs come from, and what a run's end writes (averaged/ or not, the
checkpoints it averages, the step of the final scores)."""

from __future__ import annotations

import gzip
import json
import math
import time
from pathlib import Path

import pytest
import torch
from tiny_parallel import reversal_pairs, tiny_config, write_split

import torchformer
from torchformer.data.parallel import SentencePair
from torchformer.models.rnn_seq2seq import RNNSeq2Seq
from torchformer.tasks import translate as translate_module
from torchformer.tasks import translator as translator_module
from torchformer.tasks.translate import (
    TranslationTask,
    average_checkpoints,
    build_model,
    load_pretrained_model,
    settings_of,
    train,
)
from torchformer.tasks.translate_data import (
    SOURCE_TOKENIZER,
    TARGET_TOKENIZER,
    encode_pairs,
    load_or_train_tokenizers,
    load_pairs,
    prepare_data,
)
from torchformer.tasks.translator import (
    Translator,
    evaluate_translator,
    translate_split,
)
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.checkpoint import load_checkpoint
from torchformer.train.distributed import World
from torchformer.train.logging import fingerprint_records


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    src, tgt = reversal_pairs(64, 0)
    return Tokenizer.train_bpe(src + tgt, vocab_size=60, min_frequency=1)


@pytest.fixture()
def untrained(tmp_path: Path, tokenizer: Tokenizer) -> Translator:
    """A random tiny Transformer (max_len 16) with the config's settings: decodes quickly."""
    config = tiny_config(tmp_path, **{"eval.max_len_offset": 3})
    torch.manual_seed(0)
    return Translator(
        build_model(config, tokenizer, tokenizer), tokenizer, tokenizer, settings_of(config)
    )


@pytest.fixture()
def decoder_calls(monkeypatch) -> list[dict]:
    """Every call of ``generate_ids`` by ``translate()``: its batch and options."""
    calls: list[dict] = []
    real = translator_module.generate_ids

    def spy(model, sources, **options):
        calls.append({"sources": sources, "training": model.training, **options})
        return real(model, sources, **options)

    monkeypatch.setattr(translator_module, "generate_ids", spy)
    return calls


# --- translate() ----------------------------------------------------------------------


def test_output_budget_is_longest_source_plus_offset_within_the_model_limit(
    untrained: Translator,
) -> None:
    t = untrained
    assert t.model.config.max_len == 16 and t.settings.max_len_offset == 3
    sources = [[5] * 4, [5] * 6]
    assert t.max_new_tokens(sources, None) == 6 + 3  # longest source + offset
    assert t.max_new_tokens(sources, 5) == 5  # an explicit max_len wins
    assert t.max_new_tokens(sources, 100) == 16  # capped by the model's max_len
    assert t.max_new_tokens([[5] * 15], None) == 16
    assert t.max_new_tokens(sources, 1) == 1
    assert t.max_new_tokens(sources, 0) == 1  # never below one token


def test_translate_hands_its_defaults_and_options_to_the_decoder(
    untrained: Translator, decoder_calls: list[dict]
) -> None:
    t = untrained
    t.settings.length_penalty, t.settings.early_stopping = 0.7, True
    t.translate(["one two three"])
    (call,) = decoder_calls
    assert call["beam_size"] == t.settings.beam_size == 3  # eval.beam_size of the config
    assert call["length_penalty"] == 0.7 and call["early_stopping"] is True
    assert call["use_cache"] is True  # the KV cache by default
    assert call["max_new_tokens"] == len(call["sources"][0]) + 3
    decoder_calls.clear()
    t.translate(["one two three"], beam_size=2, length_penalty=0.3, early_stopping=False,
                use_cache=False, max_len=4)  # fmt: skip
    (call,) = decoder_calls
    assert (call["beam_size"], call["length_penalty"], call["early_stopping"]) == (2, 0.3, False)
    assert call["use_cache"] is False and call["max_new_tokens"] == 4


def test_translate_decodes_in_batches_of_32_by_default_and_cuts_long_sources(
    untrained: Translator, decoder_calls: list[dict]
) -> None:
    src, _ = reversal_pairs(40, 2)
    out = untrained.translate(src, beam_size=1, max_len=2)
    assert len(out) == 40 and all(isinstance(text, str) for text in out)
    assert [len(c["sources"]) for c in decoder_calls] == [32, 8]
    decoder_calls.clear()
    untrained.translate(src, beam_size=1, max_len=2, batch_size=16)
    assert [len(c["sources"]) for c in decoder_calls] == [16, 16, 8]
    decoder_calls.clear()
    long = " ".join(["one two three four five six seven eight nine"] * 5)
    assert isinstance(untrained.translate(long, beam_size=1, max_len=2), str)
    (call,) = decoder_calls
    assert len(call["sources"][0]) == untrained.model.config.max_len == 16  # cut to fit


# --- evaluation of a split ---------------------------------------------------------------


def encoded_pairs(tmp_path: Path, n: int):
    config = tiny_config(tmp_path, n_train=n, n_val=n)
    return prepare_data(config.data, config.tokenizer, tmp_path / "data-run", seed=0,
                        write=False).encoded["val"]  # fmt: skip


def test_translate_split_decodes_the_first_limit_pairs_in_eval_mode_and_restores_training(
    untrained: Translator, decoder_calls: list[dict], tmp_path: Path
) -> None:
    pairs = encoded_pairs(tmp_path, 70)
    untrained.model.train()
    hyps, scores = translate_split(untrained, pairs, beam_size=1, limit=3)
    assert untrained.model.training  # back in training mode
    assert len(hyps) == 3 and [len(c["sources"]) for c in decoder_calls] == [3]
    assert not decoder_calls[0]["training"]  # decoded in eval mode
    assert hyps == untrained.translate(pairs.src_texts[:3], beam_size=1)
    assert {"bleu", "chrf"} <= set(scores) and "rougeL" not in scores  # rouge: off by default
    decoder_calls.clear()
    hyps, _ = translate_split(untrained, pairs, beam_size=2, limit=100)
    assert len(hyps) == 70 and [len(c["sources"]) for c in decoder_calls] == [64, 6]
    assert {c["beam_size"] for c in decoder_calls} == {2}
    decoder_calls.clear()
    _, scores = translate_split(untrained, pairs, beam_size=1, batch_size=30, rouge=True)
    assert [len(c["sources"]) for c in decoder_calls] == [30, 30, 10] and "rougeL" in scores


def test_evaluate_translator_scores_greedy_then_beam_with_the_decoding_time(
    untrained: Translator, decoder_calls: list[dict], tmp_path: Path
) -> None:
    pairs = encoded_pairs(tmp_path, 10)
    out = tmp_path / "eval" / "val"
    start = time.perf_counter()
    result = evaluate_translator(untrained, pairs, out, beam_size=2, batch_size=4)
    elapsed = time.perf_counter() - start
    assert set(result) == {"num_sentences", "greedy", "beam2"} and result["num_sentences"] == 10
    assert not any(k.startswith("rouge") for k in result["greedy"])  # ROUGE only when asked
    assert [(c["beam_size"], len(c["sources"])) for c in decoder_calls] == [
        (1, 4), (1, 4), (1, 2), (2, 4), (2, 4), (2, 2)
    ]  # fmt: skip
    assert json.loads((out / "scores.json").read_text()) == result
    for name, beam in (("greedy", 1), ("beam2", 2)):
        assert 0 < result[name]["decode_s"] <= elapsed  # the seconds that decoding took
        hyps = (out / f"hypotheses.{name}.txt").read_text(encoding="utf-8").split("\n")
        assert hyps == [*untrained.translate(pairs.src_texts, beam_size=beam, batch_size=4), ""]


# --- loading and building -------------------------------------------------------------------


def test_load_passes_overrides_to_the_loaded_model(untrained: Translator, tmp_path: Path) -> None:
    model_dir = untrained.save(tmp_path / "model")
    assert torchformer.load(model_dir).model.config.attn_impl == "sdpa"
    loaded = translate_module.load(model_dir, attn_impl="reference", dropout=0.25)
    assert (loaded.model.config.attn_impl, loaded.model.config.dropout) == ("reference", 0.25)
    assert Translator.from_dir(model_dir, attn_impl="reference").model.config.attn_impl == (
        "reference"
    )


def test_a_saved_translation_model_fine_tunes_with_the_config_overrides(
    untrained: Translator, tmp_path: Path
) -> None:
    model_dir = untrained.save(tmp_path / "model")
    overrides = {"model.pretrained": str(model_dir), "model.attn_impl": "reference"}
    config = tiny_config(tmp_path, **overrides, **{"model.dropout": 0.3})
    model, tok = load_pretrained_model(config)
    assert model.training and (model.config.attn_impl, model.config.dropout) == ("reference", 0.3)
    assert (
        tok.backend.to_str() == untrained.src_tokenizer.backend.to_str()
    )  # the model's own source tokenizer
    model, _ = load_pretrained_model(tiny_config(tmp_path, **overrides, **{"model.dropout": None}))
    assert model.config.dropout == untrained.model.config.dropout  # kept when not given


def test_the_built_models_follow_the_config(tmp_path: Path, tokenizer: Tokenizer) -> None:
    other = Tokenizer.train_bpe(reversal_pairs(64, 0)[0] + ["ten eleven"], vocab_size=50,
                                min_frequency=1)  # fmt: skip
    rnn_config = tiny_config(tmp_path, **{"model.preset": "rnn-tiny", "model.norm_first": None,
                                          "model.dropout": 0.25, "tokenizer.joint": False})  # fmt: skip
    rnn = build_model(rnn_config, other, tokenizer)
    assert isinstance(rnn, RNNSeq2Seq)
    cfg = rnn.config
    assert (cfg.dropout, cfg.max_len, cfg.share_embeddings) == (0.25, 16, False)
    assert (cfg.vocab_size, cfg.src_vocab_size) == (tokenizer.vocab_size, other.vocab_size)
    assert (cfg.pad_id, cfg.decoder_start_id, cfg.eos_id) == (
        tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    )  # fmt: skip
    joint = build_model(tiny_config(tmp_path, **{"model.preset": "rnn-tiny",
                                                 "model.norm_first": None}), tokenizer, tokenizer)  # fmt: skip
    assert joint.config.share_embeddings and joint.config.src_vocab_size is None
    transformer = build_model(tiny_config(tmp_path, **{"model.attn_impl": "reference",
                                                       "model.dropout": 0.2}), tokenizer, tokenizer)  # fmt: skip
    cfg = transformer.config
    assert (cfg.attn_impl, cfg.dropout, cfg.norm_first, cfg.tie_output) == (
        "reference", 0.2, True, True
    )  # fmt: skip
    assert (cfg.pad_id, cfg.decoder_start_id, cfg.eos_id) == (
        tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    )  # fmt: skip


# --- data: tokenizers and pairs ------------------------------------------------------------


def test_given_and_saved_tokenizer_files_are_used_side_by_side(tmp_path: Path) -> None:
    src, tgt = reversal_pairs(64, 0)
    pairs = [SentencePair(a, b) for a, b in zip(src, tgt)]
    small = Tokenizer.train_bpe(src, vocab_size=30, min_frequency=1)
    large = Tokenizer.train_bpe(tgt, vocab_size=50, min_frequency=1)
    small.save(tmp_path / "src.json")
    large.save(tmp_path / "tgt.json")
    given = {"tokenizer.path": str(tmp_path / "src.json"), "tokenizer.joint": False}
    separate = tiny_config(tmp_path, **given, **{"tokenizer.tgt_path": str(tmp_path / "tgt.json")})
    a, b = load_or_train_tokenizers(separate.tokenizer, tmp_path, pairs, write=False)
    assert (a.vocab_size, b.vocab_size) == (30, 50)
    a, b = load_or_train_tokenizers(tiny_config(tmp_path, **given).tokenizer, tmp_path, pairs,
                                    write=False)  # fmt: skip
    assert a is not b and a.vocab_size == b.vocab_size == 30  # no tgt_path: the same file
    # What a previous start of the run saved is reused, each side from its own file.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    small.save(run_dir / SOURCE_TOKENIZER)
    large.save(run_dir / TARGET_TOKENIZER)
    a, b = load_or_train_tokenizers(tiny_config(tmp_path).tokenizer, run_dir, pairs)
    assert (a.vocab_size, b.vocab_size) == (30, 50)


def test_wordpiece_tokenizers_follow_min_frequency_and_lowercase(tmp_path: Path) -> None:
    src, tgt = reversal_pairs(64, 0)
    pairs = [SentencePair(a, b) for a, b in zip(src, tgt)]
    options = {"tokenizer.kind": "wordpiece", "tokenizer.vocab_size": 40}
    common, _ = load_or_train_tokenizers(
        tiny_config(tmp_path, **options).tokenizer, tmp_path, pairs, write=False
    )
    rare, _ = load_or_train_tokenizers(
        tiny_config(tmp_path, **options, **{"tokenizer.min_frequency": 1000,
                                            "tokenizer.lowercase": True}).tokenizer,
        tmp_path, pairs, write=False,
    )  # fmt: skip
    assert rare.vocab_size < common.vocab_size  # nothing frequent enough to merge
    assert rare.encode("ONE TWO") == rare.encode("one two")  # lowercased
    assert common.encode("ONE TWO") != common.encode("one two")  # cased by default


def test_pairs_read_per_split_with_a_held_out_share_of_at_least_one(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, n_train=40, n_val=40, **{"data.val_fraction": 0.001})
    config.data.val_src = config.data.val_tgt = None
    pairs = load_pairs(config.data, seed=0)
    assert (len(pairs["train"]), len(pairs["val"]), pairs["test"]) == (39, 1, [])
    src, tgt = reversal_pairs(12, 5)
    paths = write_split(tmp_path / "test", "test", src, tgt)
    config = tiny_config(tmp_path, **paths, **{"data.train_samples": 10, "data.val_samples": 5})
    pairs = load_pairs(config.data, seed=0)
    assert [(p.src, p.tgt) for p in pairs["test"]] == list(zip(src, tgt))
    assert (len(pairs["train"]), len(pairs["val"])) == (10, 5)
    config.data.test_samples = 4
    assert len(load_pairs(config.data, seed=0)["test"]) == 4


def test_multi30k_pairs_follow_the_configured_languages(tmp_path: Path) -> None:
    folder = tmp_path / "multi30k"
    folder.mkdir()
    words = {"de": ["ein hund", "zwei katzen"], "en": ["a dog", "two cats"],
             "fr": ["un chien", "deux chats"]}  # fmt: skip
    for split in ("train", "val", "test_2016_flickr"):
        for lang, lines in words.items():
            text = "\n".join(f"{line} {split}" for line in lines) + "\n"
            (folder / f"{split}.{lang}.gz").write_bytes(gzip.compress(text.encode()))
    config = tiny_config(tmp_path, **{"data.source": "multi30k", "data.data_dir": str(tmp_path),
                                      "data.src_lang": "fr", "data.tgt_lang": "de"})  # fmt: skip
    pairs = load_pairs(config.data, seed=0)
    assert [(p.src, p.tgt) for p in pairs["train"]] == [
        ("un chien train", "ein hund train"), ("deux chats train", "zwei katzen train")
    ]  # fmt: skip
    assert pairs["val"][0].src == "un chien val"
    assert pairs["test"][1].tgt == "zwei katzen test_2016_flickr"


# --- the task's evaluation and the end of a run --------------------------------------------


def test_evaluation_decodes_greedily_the_first_bleu_samples_pairs(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, n_val=8, **{"train.bleu_samples": 3})
    task = TranslationTask(config)
    (tmp_path / "run").mkdir()
    model = task.prepare(tmp_path / "run", resume=False, main=True)
    seen: list[tuple[int, int | None]] = []
    real = task.translator.translate

    def spy(texts, **options):
        seen.append((len(texts), options["beam_size"]))
        return real(texts, **options)

    task.translator.translate = spy
    outputs = task.evaluate(model, "val", list(range(8)), torch.device("cpu"))
    assert seen == [(3, 1)]  # greedy, bleu_samples of them
    assert [i for i in sorted(outputs) if outputs[i][2] is not None] == [0, 1, 2]
    pairs = task.encoded["val"]
    assert [outputs[i][1] for i in range(8)] == [len(t) - 1 for t in pairs.tgt_ids]
    summary = task.summarize("val", outputs)
    assert set(summary) == {"loss", "ppl", "bleu", "chrf"}  # no ROUGE without eval.rouge
    assert summary["ppl"] == pytest.approx(math.exp(summary["loss"]))
    assert summary["loss"] == pytest.approx(
        sum(outputs[i][0] for i in range(8)) / pairs.target_tokens
    )


def test_with_rouge_asked_for_the_summary_adds_the_four_rouge_scores_only(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, n_val=8, **{"train.bleu_samples": 3, "eval.rouge": True})
    task = TranslationTask(config)
    (tmp_path / "run").mkdir()
    model = task.prepare(tmp_path / "run", resume=False, main=True)
    outputs = task.evaluate(model, "val", list(range(8)), torch.device("cpu"))
    summary = task.summarize("val", outputs)
    # numbers only: the ROUGE signature (a string) stays out of metrics.jsonl's rows
    assert set(summary) == {
        "loss",
        "ppl",
        "bleu",
        "chrf",
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
    }
    assert all(isinstance(v, float) for v in summary.values())


def test_the_task_builds_optimizer_schedule_sampler_and_manifest_from_the_config(
    tmp_path: Path,
) -> None:
    config = tiny_config(tmp_path, n_val=8, **{
        "train.metric": "loss", "train.schedule": "plateau", "train.warmup_steps": 0,
        "train.lr": 0.5, "train.adam_betas": [0.8, 0.9], "train.adam_eps": 1e-7,
        "train.weight_decay": 0.01, "train.max_tokens": 100, "train.seed": 3,
    })  # fmt: skip
    task = TranslationTask(config)
    (tmp_path / "run").mkdir()
    model = task.prepare(tmp_path / "run", resume=False, main=True)
    optimizer = task.build_optimizer(model)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.Adam and group["lr"] == 0.5
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.9), 1e-7, 0.01)
    scheduler = task.build_scheduler(optimizer, 100)
    assert scheduler.name == "plateau" and scheduler.plateau.mode == "min"  # a lower loss is better
    sampler = task.train_sampler(World())
    assert (sampler.max_tokens, sampler.seed) == (100, 3)
    assert list(sampler.lengths) == task.encoded["train"].lengths
    train_set = task.encoded["train"]
    assert task.batch_units([0, 1]) == sum(len(t) - 1 for t in train_set.tgt_ids[:2])
    assert (task.split_size("val"), task.split_size("test")) == (8, 0)
    manifest = task.manifest()
    assert manifest["data_fingerprint"] == fingerprint_records(
        train_set.src_texts + train_set.tgt_texts
    )
    assert manifest["extra"] == {
        "sizes": {"train": 64, "val": 8},
        "dropped_long": {"train": 0, "val": 0},
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def test_averaged_model_ends_at_the_best_checkpoint_and_final_scores_log_the_last_step(
    tmp_path: Path, monkeypatch
) -> None:
    summarize, calls = TranslationTask.summarize, []

    def first_is_best(self, split, outputs):
        calls.append(split)
        return {**summarize(self, split, outputs), "bleu": 50.0 if len(calls) == 1 else 10.0}

    monkeypatch.setattr(TranslationTask, "summarize", first_is_best)
    config = tiny_config(tmp_path, n_val=8, **{"train.max_steps": 9, "train.eval_every": 3,
                                               "train.checkpoint_every": 1, "train.keep_checkpoints": 20,
                                               "train.average_last": 2, "eval.beam_size": 1})  # fmt: skip
    run = train(config)
    best_step = records(run, "val")[0]["step"]
    assert best_step == 3 and len(records(run, "val")) >= 3
    checkpoints = {load_checkpoint(p)["step"]: p for p in (run / "checkpoints").glob("step-*.pt")}
    expected = average_checkpoints([checkpoints[2], checkpoints[3]])  # the last 2 up to the best
    averaged = Translator.from_dir(run / "averaged").model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, msg=name)
    best = Translator.from_dir(run / "best").model.state_dict()
    key = "encoder.layers.0.ffn.up_proj.weight"
    torch.testing.assert_close(best[key], load_checkpoint(checkpoints[3])["model"][key])
    last = load_checkpoint(checkpoints[9])
    for split in ("best_val", "averaged_val"):
        (row,) = records(run, split)
        assert (row["step"], row["epoch"]) == (9, last["epoch"])  # logged at the run's end


def test_without_average_last_no_averaged_model_is_written_or_selected(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, n_val=8, **{"train.max_steps": 3, "train.checkpoint_every": 1,
                                               "train.eval_every": 10**6, "eval.beam_size": 1})  # fmt: skip
    run = train(config)
    assert len(list((run / "checkpoints").glob("step-*.pt"))) >= 2  # enough to average
    assert not (run / "averaged").exists() and not (run / "eval" / "averaged_val").exists()
    selection = json.loads((run / "selected_model.json").read_text())
    assert selection["model"] == "best" and set(selection["validation"]) == {"best"}


def test_the_noam_schedule_peaks_at_train_lr_over_the_square_root_of_width_and_warmup(
    tmp_path: Path,
) -> None:
    config = tiny_config(tmp_path, **{"train.schedule": "noam", "train.warmup_steps": 4,
                                      "train.lr": 2.0})  # fmt: skip
    task = TranslationTask(config)
    (tmp_path / "run").mkdir()
    model = task.prepare(tmp_path / "run", resume=False, main=True)
    optimizer = task.build_optimizer(model)
    scheduler = task.build_scheduler(optimizer, 100)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    d_model = model.config.d_model
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * (d_model * 4) ** -0.5)


def test_training_pairs_with_either_side_too_long_are_dropped(tokenizer: Tokenizer) -> None:
    short, long = "a b", " ".join(["a b c d"] * 10)
    pairs = [SentencePair(short, short), SentencePair(long, short), SentencePair(short, long)]
    encoded, dropped = encode_pairs(pairs, tokenizer, tokenizer, max_length=12, drop_long=True)
    assert dropped == 2 and encoded.src_texts == [short] and encoded.tgt_texts == [short]
    kept, none = encode_pairs(pairs, tokenizer, tokenizer, max_length=12, drop_long=False)
    assert none == 0 and len(kept.src_texts) == 3  # evaluation keeps every pair, cut
    assert max(map(len, kept.tgt_ids)) <= 12


def test_a_table_is_read_in_the_configured_format_whatever_its_name(tmp_path: Path) -> None:
    rows = [{"src": f"a b {i}", "tgt": f"b a {i}"} for i in range(6)]
    train_file = tmp_path / "pairs.txt"  # JSON Lines under a name that says nothing
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = tiny_config(tmp_path, **{"data.source": "jsonl", "data.train_file": str(train_file),
                                      "data.val_file": str(train_file)})  # fmt: skip
    pairs = load_pairs(config.data, seed=0)
    assert pairs["train"][0] == SentencePair("a b 0", "b a 0") and len(pairs["val"]) == 6


def test_a_runs_model_is_the_one_selected_on_validation_and_survives_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from torchformer.tasks.translator import SELECTION_FILE, run_model_dir

    run = tmp_path / "run"
    for name in ("best", "averaged"):
        (run / name).mkdir(parents=True)
        (run / name / "config.json").write_text("{}")
    assert run_model_dir(run) == run / "best"  # nothing selected: best/
    assert run_model_dir(run / "averaged") == run / "averaged"  # a model directory itself
    (run / SELECTION_FILE).write_text(json.dumps({"model": "averaged"}))
    assert run_model_dir(run) == run / "averaged"
    (run / SELECTION_FILE).write_text(json.dumps({"model": "best"}))
    with caplog.at_level("WARNING", logger="torchformer"):
        assert run_model_dir(run) == run / "best"
    assert not caplog.records  # best/ chosen on purpose: nothing to warn about
    (run / SELECTION_FILE).write_text(json.dumps({"model": "elsewhere"}))
    with caplog.at_level("WARNING", logger="torchformer"):
        assert run_model_dir(run) == run / "best"  # not a model of the run
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    (run / "best").rename(run / ".best.old")  # a crash while best/ was being replaced
    assert run_model_dir(run) == run / "best" and (run / "best" / "config.json").is_file()


def test_the_saved_settings_follow_the_eval_config(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, **{"eval.beam_size": 3, "eval.length_penalty": 0.6,
                                      "eval.max_len_offset": 7})  # fmt: skip
    s = settings_of(config)
    assert (s.beam_size, s.length_penalty, s.max_len_offset) == (3, 0.6, 7)
    fr = settings_of(tiny_config(tmp_path, **{"data.src_lang": "fr", "data.tgt_lang": "cs",
                                              "data.source_prefix": "fr: "}))  # fmt: skip
    assert (fr.src_lang, fr.tgt_lang, fr.source_prefix) == ("fr", "cs", "fr: ")


def test_only_the_main_process_writes_the_runs_tokenizers(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    other = tmp_path / "rank1"
    other.mkdir()
    TranslationTask(config).prepare(other, resume=False, main=False)
    assert not (other / SOURCE_TOKENIZER).exists() and not (other / TARGET_TOKENIZER).exists()
    main = tmp_path / "rank0"
    main.mkdir()
    TranslationTask(config).prepare(main, resume=False, main=True)
    assert (main / SOURCE_TOKENIZER).is_file() and (main / TARGET_TOKENIZER).is_file()


def test_an_unknown_data_source_is_named_with_the_ones_there_are() -> None:
    from torchformer.tasks.translate_data import DataConfig, _read_split

    with pytest.raises(ValueError, match=r"data\.source must be one of 'multi30k', 'files', "
                       r"'tsv', 'csv', 'jsonl', 'json'; got 'xml'"):  # fmt: skip
        _read_split(DataConfig(source="xml"), "train")
