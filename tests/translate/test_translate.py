"""The translation task end to end through its public paths: ``train`` -> run directory
-> ``torchformer.load(run).translate(...)`` and the CLI; exact resume; bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from tiny_parallel import reversal_pairs, tiny_config, write_lines, write_split

import torchformer
from torchformer.cli import main
from torchformer.config import load_config
from torchformer.data.records import DataError
from torchformer.models.rnn_seq2seq import PRESETS as RNN_PRESETS
from torchformer.models.seq2seq import PRESETS
from torchformer.tasks.translate import (
    TranslateConfig,
    average_checkpoints,
    averaging_window,
    select_model,
    train,
)
from torchformer.tasks.translate_data import (
    SOURCE_TOKENIZER,
    TARGET_TOKENIZER,
    EncodedPairs,
    make_batch,
)
from torchformer.tasks.translator import Translator, generate_ids
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.checkpoint import load_checkpoint
from torchformer.train.run_dir import RunDirError


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny model trained to reverse 64 number-word sentences (~200 steps)."""
    folder = tmp_path_factory.mktemp("reverse")
    test_split = write_split(folder, "test", *reversal_pairs(8, 0))  # 8 of the training pairs
    config = tiny_config(folder, **{"train.max_steps": 300, "train.eval_every": 10**6,
                                    "train.average_last": 2, **test_split})  # fmt: skip
    return train(config)


def test_tiny_model_learns_to_reverse_and_decodes_exactly(trained_run: Path) -> None:
    assert records(trained_run, "train")[-1]["loss"] < 0.05  # near zero (no label smoothing)
    assert records(trained_run, "val")[-1]["loss"] < 0.05
    src, tgt = reversal_pairs(64, 0)
    translator = torchformer.load(trained_run)
    assert isinstance(translator, Translator)
    assert translator.translate(src, beam_size=1) == tgt  # greedy
    assert translator.translate(src, beam_size=3) == tgt  # beam search
    assert (
        translator.translate(src[:8], beam_size=3, use_cache=False) == tgt[:8]
    )  # same without the cache
    assert translator.translate(src[0]) == tgt[0]  # one string in, one string out
    assert translator.settings.early_stopping == "heuristic"  # HF's default beam stopping
    with pytest.raises(ValueError, match="early_stopping"):
        translator.translate(src[0], beam_size=3, early_stopping="soon")


def test_the_model_and_settings_follow_the_config(trained_run: Path) -> None:
    translator = torchformer.load(trained_run)
    cfg, tok = translator.model.config, translator.tgt_tokenizer
    assert cfg.share_embeddings and cfg.src_vocab_size is None  # one joint vocabulary
    assert (cfg.pad_id, cfg.eos_id) == (tok.pad_id, tok.eos_id) and cfg.max_len == 16
    assert (translator.settings.src_lang, translator.settings.tgt_lang) == ("de", "en")
    assert translator.settings.beam_size == 3  # eval.beam_size
    rows = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    for split in ("best_val", "averaged_val"):  # the final scoring of both models is logged
        (row,) = [r for r in rows if r["split"] == split]
        assert {"greedy_bleu", "beam3_bleu", "greedy_chrf", "beam3_chrf"} <= set(row)


def test_run_directory_holds_model_scores_and_hypotheses(trained_run: Path) -> None:
    for name in ("config.yaml", "manifest.json", "source_tokenizer.json", "target_tokenizer.json",
                 "best/config.json", "best/model.safetensors", "best/source_tokenizer.json",
                 "best/target_tokenizer.json", "best/translation.json", "eval/val/hypotheses.greedy.txt",
                 "eval/val/hypotheses.beam3.txt", "averaged/config.json", "eval/averaged_val/scores.json"):  # fmt: skip
        assert (trained_run / name).is_file(), name
    scores = json.loads((trained_run / "eval/val/scores.json").read_text())
    for decoding in ("greedy", "beam3"):
        assert scores[decoding]["bleu"] == pytest.approx(100.0)
        assert scores[decoding]["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert "chrf" in scores[decoding] and scores[decoding]["chrf_signature"]
    config = json.loads((trained_run / "best/config.json").read_text())
    assert config["model_type"] == "torchformer-transformer"
    assert config["share_embeddings"] and config["tie_output"]  # joint vocabulary: one tied matrix
    hyps = (trained_run / "eval/val/hypotheses.beam3.txt").read_text().splitlines()
    assert hyps == reversal_pairs(64, 0)[1]


def test_the_finished_run_scores_both_models_on_the_test_split(trained_run: Path) -> None:
    expected = reversal_pairs(8, 0)[1]
    for name in ("test", "averaged_test"):
        scores = json.loads((trained_run / "eval" / name / "scores.json").read_text())
        assert scores["num_sentences"] == 8
        hyps = (trained_run / "eval" / name / "hypotheses.beam3.txt").read_text().splitlines()
        assert hyps == expected, name
    logged = {
        json.loads(x)["split"] for x in (trained_run / "metrics.jsonl").read_text().splitlines()
    }
    assert {"best_test", "averaged_test"} <= logged


def test_averaged_model_is_the_mean_of_the_last_checkpoints(trained_run: Path) -> None:
    last = sorted((trained_run / "checkpoints").glob("step-*.pt"))[-2:]
    expected = average_checkpoints(last)
    a, b = (load_checkpoint(p)["model"] for p in last)
    key = "encoder.layers.0.ffn.up_proj.weight"
    torch.testing.assert_close(expected[key], (a[key] + b[key]) / 2)
    averaged = Translator.from_dir(trained_run / "averaged").model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, msg=name)


def test_cli_translate_and_evaluate(trained_run: Path, tmp_path: Path, capsys) -> None:
    src, tgt = reversal_pairs(64, 0)
    assert main(["translate", str(trained_run), src[0], src[1], "--beam-size", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == tgt[:2]
    src_file, out = write_lines(tmp_path / "in.txt", src[:10]), tmp_path / "out.txt"
    assert (
        main(
            [
                "translate",
                str(trained_run),
                "--file",
                str(src_file),
                "--out",
                str(out),
                "--max-len",
                "10",
            ]
        )
        == 0
    )
    assert out.read_text().splitlines() == tgt[:10]
    ref_file = write_lines(tmp_path / "ref.txt", tgt[:10])
    code = main(["evaluate-translation", str(trained_run), "--src", str(src_file), "--ref", str(ref_file),
                 "--name", "mini", "--beam-size", "3"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        "BLEU = 100.00  nrefs:1|case:mixed|eff:no|tok:13a" in printed and "chrF = 100.00" in printed
    )
    scores = json.loads((trained_run / "eval/mini/scores.json").read_text())
    assert scores["bleu"] == pytest.approx(100.0) and scores["num_sentences"] == 10
    assert (trained_run / "eval/mini/hypotheses.txt").read_text().splitlines() == tgt[:10]
    # The folder is not replaced without --overwrite, and --name stays inside eval/.
    again = [
        "evaluate-translation",
        str(trained_run),
        "--src",
        str(src_file),
        "--ref",
        str(ref_file),
    ]
    assert main([*again, "--name", "mini"]) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert main([*again, "--name", "mini", "--overwrite", "--beam-size", "1"]) == 0
    for escape in ("../best", str(tmp_path / "elsewhere")):
        assert main([*again, "--name", escape]) == 2
    assert not (tmp_path / "elsewhere").exists()


def test_resume_gives_the_same_weights_as_an_unbroken_run(tmp_path: Path) -> None:
    # Both runs share one tokenizer file: BPE training breaks frequency ties
    # differently from one process to the next.
    src, tgt = reversal_pairs(64, 0)
    tokenizer = Tokenizer.train_bpe(src + tgt, vocab_size=60, min_frequency=1)
    tokenizer.save(tmp_path / "tokenizer.json")
    overrides = {"tokenizer.path": str(tmp_path / "tokenizer.json"), "model.dropout": 0.1,
                 "train.epochs": 3, "train.grad_accum": 2, "train.max_tokens": 100,
                 "train.checkpoint_every": 1, "train.label_smoothing": 0.1, "n_val": 8}  # fmt: skip
    unbroken = train(tiny_config(tmp_path / "a", **overrides))
    config = tiny_config(tmp_path / "b", **overrides)
    train(config, stop_at_step=5)  # mid-epoch 2, after an epoch-end evaluation
    assert not (Path(config.run_dir) / "eval").exists()
    resumed = train(config, resume=True)
    steps = [sorted((run / "checkpoints").glob("step-*.pt"))[-1] for run in (unbroken, resumed)]
    a, b = (load_checkpoint(p) for p in steps)
    assert a["step"] == b["step"] > 5 and a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)
    # Each step once in metrics.jsonl: what the stopped run logged after its checkpoint is gone.
    assert [(r["step"], r["bleu"]) for r in records(unbroken, "val")] == [
        (r["step"], r["bleu"]) for r in records(resumed, "val")
    ]
    assert [r["step"] for r in records(unbroken, "train")] == [
        r["step"] for r in records(resumed, "train")
    ]
    scores = [json.loads((run / "eval/val/scores.json").read_text()) for run in (unbroken, resumed)]
    assert scores[0]["beam3"]["bleu"] == scores[1]["beam3"]["bleu"]


def test_separate_wordpiece_vocabularies_train_and_translate(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, n_val=8, **{"tokenizer.kind": "wordpiece", "tokenizer.joint": False,
                                               "train.max_steps": 3, "eval.beam_size": 2})  # fmt: skip
    run = train(config)
    translator = torchformer.load(run)
    cfg = translator.model.config
    assert not cfg.share_embeddings and cfg.src_vocab_size == translator.src_tokenizer.vocab_size
    assert cfg.vocab_size == translator.tgt_tokenizer.vocab_size
    assert cfg.max_len == config.data.max_length == 16
    assert (
        translator.model.tgt_embed is not None and translator.model.lm_head is None
    )  # output tied to target
    assert [type(t) for t in translator.translate(["one two", "three"], beam_size=2)] == [str, str]


@pytest.mark.parametrize(
    ("src_bytes", "tgt_bytes", "bad_side", "line", "expected"),
    [
        (b"one two\nthree\nfour\n", b"two one\nthree\n", "src", 3, "has 3 lines but"),
        (b"one two\nthree\nfour\n", b"two one\n\nfour\n", "tgt", 2, "empty line; its pair in"),
        (b"one two\nthr\xffee\n", b"two one\nthree\n", "src", 2, "undecodable bytes"),
    ],
)
def test_bad_parallel_files_name_both_files_and_the_line(
    tmp_path: Path, src_bytes: bytes, tgt_bytes: bytes, bad_side: str, line: int, expected: str
) -> None:
    config = tiny_config(tmp_path)
    paths = {"src": Path(config.data.train_src), "tgt": Path(config.data.train_tgt)}
    paths["src"].write_bytes(src_bytes)
    paths["tgt"].write_bytes(tgt_bytes)
    with pytest.raises(DataError) as info:
        train(config)
    message = str(info.value)
    assert expected in message
    assert str(paths["src"]) in message and str(paths["tgt"]) in message
    assert message.startswith(f"{paths[bad_side]}:{line}:")
    assert not (Path(config.run_dir) / "checkpoints").exists()


def test_bad_gzip_tsv_names_file_line_and_column(tmp_path: Path) -> None:
    tsv = tmp_path / "pairs.tsv.gz"
    tsv.write_bytes(gzip.compress(b"src\ttgt\none two\ttwo one\nthree\n"))
    config = tiny_config(tmp_path, **{"data.source": "tsv", "data.train_file": str(tsv)})
    with pytest.raises(DataError) as info:
        train(config)
    assert str(info.value).startswith(f"{tsv}:3: field 'tgt': missing")


def test_shipped_translation_configs_load() -> None:
    folder = Path(torchformer.__file__).parent / "configs"
    shipped = sorted(folder.glob("multi30k-*.yaml"), key=lambda p: p.stem)
    names = ["multi30k-base", "multi30k-rnn", "multi30k-small", "multi30k-t5", "multi30k-t5-small"]
    assert [p.stem for p in shipped] == names
    rnn = load_config(TranslateConfig, folder / "multi30k-rnn.yaml")  # the RNN baseline
    assert (
        rnn.model.preset in RNN_PRESETS
        and rnn.data == load_config(TranslateConfig, folder / "multi30k-small.yaml").data
    )  # the Transformer's data, so the two compare
    shipped.pop(1)
    for name in names[3:]:  # T5's text-to-text format: a task prefix before every source
        config = load_config(TranslateConfig, folder / f"{name}.yaml")
        assert config.data.source_prefix == "translate German to English: "
        assert config.model.pretrained or PRESETS[config.model.preset].flavour == "t5"
        assert config.train.optimizer == "adamw"
    shipped = shipped[:2]
    for path in shipped:
        config = load_config(TranslateConfig, path)
        assert config.task == "translation" and config.model.preset in PRESETS
        assert config.train.schedule == "noam" and tuple(config.train.adam_betas) == (0.9, 0.98)
        assert config.train.adam_eps == 1e-9 and config.train.max_grad_norm == 1.0
        assert config.tokenizer.joint and not config.tokenizer.lowercase  # cased, tied embeddings
    base = PRESETS[load_config(TranslateConfig, shipped[0]).model.preset]
    assert (base.d_model, base.n_encoder_layers, base.n_heads, base.d_ff, base.dropout) == (
        512,
        6,
        8,
        2048,
        0.1,
    )


def test_run_selects_best_or_averaged_on_validation(trained_run: Path) -> None:
    selection = json.loads((trained_run / "selected_model.json").read_text())
    assert selection["model"] in ("best", "averaged") and "validation" in selection["by"]
    scores = selection["validation"]
    assert selection["model"] == max(scores, key=scores.get)
    assert set(scores) == {"best", "averaged"}
    assert selection["by"] == "validation beam3 bleu"  # the config's metric is the loss
    val = json.loads((trained_run / "eval/val/scores.json").read_text())
    assert scores["best"] == val["beam3"]["bleu"]


def test_a_chrf_run_selects_on_chrf_and_its_plateau_schedule_maximises_it(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, n_val=8, **{"train.max_steps": 24, "train.eval_every": 6,
                                               "train.metric": "chrf", "train.schedule": "plateau",
                                               "train.warmup_steps": 0, "train.average_last": 2,
                                               "eval.beam_size": 2})  # fmt: skip
    run = train(config)
    vals = [r["chrf"] for r in records(run, "val")]
    assert len(vals) == 4 and len(set(vals)) > 1
    last = sorted((run / "checkpoints").glob("*"))[-1]
    plateau = load_checkpoint(last)["scheduler"]["plateau"]
    assert plateau["best"] == pytest.approx(max(vals))  # "max": a higher chrF is better
    selection = json.loads((run / "selected_model.json").read_text())
    assert selection["by"] == "validation beam2 chrf"
    for name, folder in (("best", "val"), ("averaged", "averaged_val")):
        scores = json.loads((run / "eval" / folder / "scores.json").read_text())
        assert selection["validation"][name] == scores["beam2"]["chrf"]


def test_load_of_a_run_follows_its_selection(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    (run / "selected_model.json").write_text('{"model": "averaged"}')
    averaged = Translator.from_dir(run / "averaged").model.state_dict()
    loaded = torchformer.load(run).model.state_dict()
    key = "encoder.layers.0.ffn.up_proj.weight"
    torch.testing.assert_close(loaded[key], averaged[key])
    # Killed between the two renames of a replacement of averaged/: the load puts the
    # previous version back and still follows the selection.
    (run / "averaged").rename(run / ".averaged.old")
    loaded = torchformer.load(run).model.state_dict()
    assert (run / "averaged" / "config.json").is_file() and not (run / ".averaged.old").exists()
    torch.testing.assert_close(loaded[key], averaged[key])


def test_save_writes_a_model_directory_that_translates_the_same(trained_run, tmp_path) -> None:
    translator = torchformer.load(trained_run)
    out = translator.save(tmp_path / "saved")
    for name in ("config.json", "model.safetensors", "source_tokenizer.json",
                 "target_tokenizer.json", "translation.json"):  # fmt: skip
        assert (out / name).is_file(), name
    again = torchformer.load(out)
    assert isinstance(again, Translator) and again.settings == translator.settings
    src, _ = reversal_pairs(8, 0)
    assert again.translate(src, beam_size=2) == translator.translate(src, beam_size=2)


def test_averaging_window_ends_at_the_best_checkpoint() -> None:
    steps = [10, 20, 30, 40, 50, 60, 70]
    assert averaging_window(steps, 3, best_step=40) == [20, 30, 40]  # early stop 3 evals later
    assert averaging_window(steps, 3, best_step=None) == [50, 60, 70]
    assert averaging_window(steps, 5, best_step=20) == [10, 20]


def test_batch_counts_the_labels_the_decoder_predicts() -> None:
    pairs = EncodedPairs(src_ids=[[1, 5, 2], [1, 5, 6, 7, 2]], tgt_ids=[[1, 8, 2], [1, 8, 9, 9, 2]],
                         src_texts=["a", "b"], tgt_texts=["c", "d"])  # fmt: skip
    batch = make_batch(pairs, [0, 1], pad_id=0)
    assert batch.num_target_tokens == pairs.target_tokens == 2 + 4
    assert batch.num_target_tokens == int(batch.labels.ne(0).sum())
    assert batch.to(torch.device("cpu")).num_target_tokens == 6


def test_decoding_never_emits_padding_start_or_unknown(trained_run: Path) -> None:
    translator = torchformer.load(trained_run)
    model, src = (
        translator.model,
        translator.src_tokenizer.encode_batch(reversal_pairs(8, 3)[0], max_length=16),
    )
    free = generate_ids(model, src, beam_size=1, max_new_tokens=6)
    first = free[0][0]  # ban what the model wants most at step one
    banned = generate_ids(model, src, beam_size=1, max_new_tokens=6, banned_ids=(first,))
    assert banned[0][0] != first and all(first not in row for row in banned)
    assert set(translator.banned_ids) >= {model.config.pad_id, model.config.decoder_start_id}
    for beam in (1, 3):
        rows = generate_ids(
            model, src, beam_size=beam, max_new_tokens=6, banned_ids=translator.banned_ids
        )
        assert not {i for row in rows for i in row} & set(translator.banned_ids)


def test_translate_file_keeps_blank_lines_aligned(trained_run: Path, tmp_path: Path) -> None:
    src, tgt = reversal_pairs(64, 0)
    src_file = write_lines(tmp_path / "in.txt", [src[0], "", src[1]])
    out = tmp_path / "out.txt"
    assert main(["translate", str(trained_run), "--file", str(src_file), "--out", str(out)]) == 0
    assert out.read_text().splitlines() == [tgt[0], "", tgt[1]]


def test_a_fresh_run_refuses_an_existing_run(trained_run: Path) -> None:
    config = load_config(TranslateConfig, trained_run / "config.yaml")
    before = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    with pytest.raises(RunDirError, match="already holds a run"):
        train(config)
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == before


def test_translate_bans_padding_start_and_unknown(trained_run: Path, monkeypatch) -> None:
    from torchformer.tasks import translator as module

    seen = []
    real = module.generate_ids
    monkeypatch.setattr(module, "generate_ids", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    translator = torchformer.load(trained_run)
    translator.translate(["one two"], beam_size=2)
    assert seen and seen[0]["banned_ids"] == translator.banned_ids != ()


def test_a_selection_naming_a_missing_model_falls_back_to_best(
    trained_run: Path, tmp_path: Path
) -> None:
    import shutil

    from torchformer.tasks.translator import run_model_dir

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    (run / "selected_model.json").write_text('{"model": "../elsewhere"}')
    assert run_model_dir(run) == run / "best"
    (run / "selected_model.json").write_text('{"model": "averaged"}')
    shutil.rmtree(run / "averaged")
    assert run_model_dir(run) == run / "best"


def test_selection_takes_the_better_validation_score_and_keeps_best_on_ties() -> None:
    assert select_model({"best": 40.45, "averaged": 40.26}) == "best"
    assert select_model({"best": 40.26, "averaged": 40.45}) == "averaged"
    assert select_model({"averaged": 40.0, "best": 40.0}) == "best"
    assert select_model({}) == "best"


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    from torchformer.tasks import translate
    from torchformer.train.guards import NonFiniteLossError

    loss, calls = translate.sequence_loss, []

    def nan_at_call_4(*args, **kwargs):
        calls.append(1)
        value = loss(*args, **kwargs)
        return value * float("nan") if len(calls) == 4 else value

    monkeypatch.setattr(translate, "sequence_loss", nan_at_call_4)
    config = tiny_config(tmp_path, **{"train.max_steps": 10, "train.max_tokens": 100,
                                      "train.checkpoint_every": 1, "train.eval_every": 10**6})  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step 4") as err:
        train(config)
    assert "last good checkpoint (step 3)" in str(err.value)
    assert "last good checkpoint (step 3)" in records(Path(config.run_dir), "train")[-1]["error"]


def test_adamw_is_the_decoupled_optimizer_and_enough_checkpoints_are_kept_to_average(
    tmp_path: Path,
) -> None:
    from torchformer.tasks.translate import TranslationTask

    config = tiny_config(tmp_path, n_val=8, **{"train.max_steps": 2, "train.optimizer": "adamw",
                                               "train.weight_decay": 0.1, "eval.beam_size": 1})  # fmt: skip
    run = train(config)
    groups = load_checkpoint(sorted((run / "checkpoints").glob("*.pt"))[-1])["optimizer"]
    assert all(g["decoupled_weight_decay"] for g in groups["param_groups"])
    keep = {"train.keep_checkpoints": 2, "train.patience": 3}
    assert (
        TranslationTask(
            tiny_config(tmp_path, **keep, **{"train.average_last": 5})
        ).checkpoints_to_keep()
        == 8
    )
    assert (
        TranslationTask(
            tiny_config(tmp_path, **keep, **{"train.average_last": 1})
        ).checkpoints_to_keep()
        == 2
    )
    assert (  # averaging two checkpoints is averaging: the boundary
        TranslationTask(
            tiny_config(tmp_path, **keep, **{"train.average_last": 2})
        ).checkpoints_to_keep()
        == 5
    )


def test_tokenizers_are_trained_to_the_configured_size_and_saved_in_the_run(tmp_path: Path) -> None:
    from torchformer.tasks.translate_data import load_or_train_tokenizers

    config = tiny_config(tmp_path, **{"tokenizer.vocab_size": 40})
    src, tgt = reversal_pairs(64, 0)
    pairs = [torchformer.data.parallel.SentencePair(a, b) for a, b in zip(src, tgt)]
    run_dir = tmp_path / "tok-run"
    run_dir.mkdir()
    a, b = load_or_train_tokenizers(config.tokenizer, run_dir, pairs)
    assert a.vocab_size == b.vocab_size == 40
    assert sorted(p.name for p in run_dir.iterdir()) == [SOURCE_TOKENIZER, TARGET_TOKENIZER]
    other = tmp_path / "not-written"
    other.mkdir()
    rare = tiny_config(tmp_path, **{"tokenizer.min_frequency": 1000, "tokenizer.lowercase": True})
    c, _ = load_or_train_tokenizers(rare.tokenizer, other, pairs, write=False)
    assert not list(other.iterdir())  # write=False: nothing saved
    assert c.vocab_size < 40  # no pair is frequent enough to merge: characters and specials
    assert c.encode("ONE TWO") == c.encode("one two")  # tokenizer.lowercase
