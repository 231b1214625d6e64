"""Text-to-text on the translation task: pairs from CSV/JSON Lines, a source prefix saved with
the model, fine-tuning a pretrained T5 checkpoint (Hugging Face layout, its own tokenizer)
and ROUGE next to BLEU/chrF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_parallel import WORDS, reversal_pairs, tiny_config
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors

import torchformer
from torchformer.cli import main
from torchformer.data.parallel import read_parallel_table
from torchformer.data.records import DataError
from torchformer.tasks.translate import TranslationTask, train
from torchformer.tasks.translate_data import encode_pairs, load_pairs, prepare_data
from torchformer.text.tokenizer import Tokenizer
from torchformer.train.loop import fit

PREFIX = "reverse: "


def write_jsonl(path: Path, src: list[str], tgt: list[str], keys=("question", "answer")) -> Path:
    rows = [json.dumps({keys[0]: s, keys[1]: t, "id": i}) for i, (s, t) in enumerate(zip(src, tgt))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_and_jsonl_pairs_are_read_with_quoting_and_named_errors(tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text('src,tgt\n"one, two","two, one"\n"multi\nline",x\n', encoding="utf-8")
    pairs = read_parallel_table(csv, "src", "tgt")
    assert [(p.src, p.tgt) for p in pairs] == [("one, two", "two, one"), ("multi\nline", "x")]
    jsonl = write_jsonl(tmp_path / "qa.jsonl", ["a b", "c d"], ["b a", "d c"])
    assert [p.tgt for p in read_parallel_table(jsonl, "question", "answer")] == ["b a", "d c"]

    with pytest.raises(DataError) as info:
        read_parallel_table(jsonl, "question", "reply")
    assert str(info.value).startswith(f"{jsonl}:1: field 'reply': missing")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": "a", "tgt": "b"}\n{"src": "a", "tgt": ""}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_parallel_table(bad, "src", "tgt")
    assert str(info.value).startswith(f"{bad}:2: field 'tgt': empty text")
    with pytest.raises(DataError) as info:
        read_parallel_table(csv, "src", "target")
    assert "columns present: src, tgt" in str(info.value)


def test_source_prefix_is_trained_with_and_saved_for_translate(tmp_path: Path, capsys) -> None:
    src, tgt = reversal_pairs(64, 0)
    data = write_jsonl(tmp_path / "train.jsonl", src, tgt, keys=("src", "tgt"))
    config = tiny_config(tmp_path, **{
        "data.source": "jsonl", "data.train_file": str(data), "data.val_file": str(data),
        "data.source_prefix": PREFIX, "tokenizer.vocab_size": 80,
        "train.max_steps": 300, "train.eval_every": 10**6,
        "eval.rouge": True, "train.metric": "rougeL",
    })  # fmt: skip
    task = TranslationTask(config)
    run = fit(task)

    translator = torchformer.load(run)
    assert translator.settings.source_prefix == PREFIX
    tok = translator.src_tokenizer
    assert task.encoded["train"].src_ids[0] == tok.encode(PREFIX + src[0])
    assert task.encoded["train"].src_texts[0] == src[0]  # raw text kept, prefix added on encoding
    assert translator.translate(src[:16], beam_size=1) == tgt[:16]  # the prefix is added
    seen: list[str] = []
    encode = tok.encode_batch
    tok.encode_batch = lambda texts, **kw: seen.extend(texts) or encode(texts, **kw)
    translator.translate(["one two"], beam_size=1)
    assert seen == [PREFIX + "one two"]
    scores = json.loads((run / "eval" / "val" / "scores.json").read_text())
    assert scores["greedy"]["rougeL"] == pytest.approx(100.0)
    assert scores["greedy"]["bleu"] == pytest.approx(100.0)
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("rougeL" in r for r in val if r["split"] == "val")
    assert json.loads((run / "selected_model.json").read_text())["by"].endswith("rougeL")

    assert main(["evaluate-translation", str(run), "--pairs", str(data), "--beam-size", "1",
                 "--rouge", "--name", "cli"]) == 0  # fmt: skip
    cli = json.loads((run / "eval" / "cli" / "scores.json").read_text())
    assert cli["rougeL"] == pytest.approx(100.0) and cli["bleu"] == pytest.approx(100.0)
    assert "ROUGE: rouge1 100.00" in capsys.readouterr().out


def test_rouge_metric_without_rouge_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^train\.metric 'rougeL' needs eval\.rouge: true$"):
        TranslationTask(tiny_config(tmp_path, **{"train.metric": "rougeL"}))


# --- fine-tuning a pretrained T5 --------------------------------------------------------


def t5_tokenizer() -> HFTokenizer:
    """A word-level tokenizer with T5's special tokens and template (``$A </s>``)."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "reverse:": 3}
    vocab.update({w: i for i, w in enumerate(WORDS, start=len(vocab))})
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return backend


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=16, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("t5-tiny")
    transformers.T5ForConditionalGeneration(config).save_pretrained(path)
    t5_tokenizer().save(str(path / "tokenizer.json"))
    return path


def test_pretrained_t5_fine_tunes_with_its_tokenizer_and_stays_hf_compatible(
    t5_dir: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    src, tgt = reversal_pairs(64, 0)
    data = write_jsonl(tmp_path / "pairs.jsonl", src, tgt)
    config = tiny_config(tmp_path, **{
        "data.source": "jsonl", "data.train_file": str(data), "data.val_file": str(data),
        "data.src_column": "question", "data.tgt_column": "answer",
        "data.source_prefix": PREFIX, "model.pretrained": str(t5_dir),
        "train.optimizer": "adamw", "train.schedule": "constant", "train.lr": 3e-3,
        "train.warmup_steps": 0, "train.max_steps": 300, "train.eval_every": 10**6,
    })  # fmt: skip
    task = TranslationTask(config)
    run = fit(task)

    # T5's layout: sources "reverse: words </s>", targets "<pad> words </s>" (pad starts).
    encoded = task.encoded["train"]
    tok = Tokenizer.from_pretrained_dir(t5_dir)
    assert encoded.src_ids[0] == tok.encode(PREFIX + src[0])
    assert encoded.src_ids[0][0] == 3 and encoded.src_ids[0][-1] == 1
    assert encoded.tgt_ids[0] == [0, *tok.encode(tgt[0])]

    translator = torchformer.load(run)
    assert translator.translate(src, beam_size=1) == tgt
    assert translator.translate(src[:8], beam_size=3) == tgt[:8]

    # best/ is a T5 checkpoint transformers reads, with the fine-tuned weights.
    hf = transformers.T5ForConditionalGeneration.from_pretrained(run / "best").eval()
    ids = torch.tensor([encoded.src_ids[0]])
    dec = torch.tensor([encoded.tgt_ids[0][:-1]])
    with torch.no_grad():
        theirs = hf(input_ids=ids, decoder_input_ids=dec).logits
        ours = translator.model(ids, dec).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    start = transformers.T5ForConditionalGeneration.from_pretrained(t5_dir)
    assert not torch.equal(start.shared.weight, hf.shared.weight)  # it was fine-tuned


def test_a_tokenizer_without_the_end_token_is_refused(t5_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "t5-no-eos"
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        (model_dir / name).write_bytes((t5_dir / name).read_bytes())
    backend = t5_tokenizer()
    backend.post_processor = None
    backend.save(str(model_dir / "tokenizer.json"))
    config = tiny_config(tmp_path, **{"model.pretrained": str(model_dir)})
    with pytest.raises(ValueError, match=r"model's end id is 1"):
        train(config)


def test_encode_pairs_keeps_a_tokenizer_start_token() -> None:
    # A tokenizer that already starts a text with the decoder start id gets no second one.
    tok = Tokenizer.train_bpe(["a b c", "c b a"] * 5, vocab_size=40, min_frequency=1)
    start = tok.bos_id
    encoded, _ = encode_pairs(
        [torchformer.data.parallel.SentencePair("a b", "b a")], tok, tok,
        max_length=16, drop_long=True, start_id=start,
    )  # fmt: skip
    assert encoded.tgt_ids[0] == tok.encode("b a") and encoded.tgt_ids[0][0] == start
    assert encoded.src_ids[0] == tok.encode("a b")  # no prefix unless one is given


def test_evaluation_pairs_are_cut_to_max_length_with_the_start_token_counted() -> None:
    tok = Tokenizer.train_bpe(["a b c d e f", "f e d c b a"] * 5, vocab_size=40, min_frequency=1)
    bare = Tokenizer.train_bpe(
        ["a b c"], vocab_size=40, min_frequency=1, special_tokens=("<pad>", "<unk>")
    )
    pair = torchformer.data.parallel.SentencePair("a b c d e f", "f e d c b a")
    for tgt_tok, lead in ((tok, []), (bare, [7])):
        cut, dropped = encode_pairs([pair], tok, tgt_tok, max_length=4, drop_long=False, start_id=7)
        assert dropped == 0 and len(cut.src_ids[0]) == 4 and len(cut.tgt_ids[0]) == 4
        assert cut.tgt_ids[0][: len(lead)] == lead
        kept, dropped = encode_pairs([pair], tok, tgt_tok, max_length=4, drop_long=True, start_id=7)
        assert dropped == 1 and len(kept) == 0  # training leaves long pairs out instead


def test_without_validation_files_a_seeded_share_of_train_is_held_out(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, n_train=40, n_val=40, **{"data.val_fraction": 0.25})
    data = config.data
    data.val_src = data.val_tgt = None
    first, again, other = (load_pairs(data, seed=s) for s in (0, 0, 1))
    assert len(first["val"]) == 10 and len(first["train"]) == 30
    assert not {(p.src, p.tgt) for p in first["val"]} & {(p.src, p.tgt) for p in first["train"]}
    assert first == again and first["val"] != other["val"]


def test_long_training_pairs_are_dropped_with_a_warning_and_none_left_is_an_error(
    tmp_path: Path, caplog
) -> None:
    config = tiny_config(tmp_path, **{"data.max_length": 6})
    with caplog.at_level("WARNING", logger="torchformer.tasks.translate_data"):
        prepared = prepare_data(
            config.data, config.tokenizer, tmp_path / "run", seed=0, write=False
        )
    assert prepared.dropped["train"] > 0 and len(prepared.encoded["train"]) > 0
    assert f"dropped {prepared.dropped['train']} training pairs longer than 6 tokens" in caplog.text
    config = tiny_config(tmp_path, **{"data.max_length": 3})
    with pytest.raises(DataError, match=r"every training pair is longer than data\.max_length=3"):
        prepare_data(config.data, config.tokenizer, tmp_path / "run", seed=0, write=False)
