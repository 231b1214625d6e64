"""The masked-LM and denoising tasks' batches without a training run: the blocks, their
corruption, and held-out losses that do not depend on how the blocks are batched."""

from __future__ import annotations

import math
import random

import pytest
import torch
from test_masked_lm import tiny_config  # tests/lm is on sys.path (skips without MiniLM)

from torchformer.tasks.denoising import DenoisingConfig, DenoisingTask
from torchformer.tasks.masked_lm import MaskedLMTask

CPU = torch.device("cpu")


def prepared(tmp_path, task_class=MaskedLMTask, config_class=None, **overrides):
    if config_class is not None:
        overrides = {"model.preset": "bart-tiny", "tokenizer.vocab_size": 120, **overrides}
        config = tiny_config(tmp_path, config_class, **overrides)
    else:
        config = tiny_config(tmp_path, **overrides)
    task = task_class(config)
    (tmp_path / "run").mkdir(exist_ok=True)
    task.prepare(tmp_path / "run", resume=False, main=True)
    return task


def test_a_block_is_cls_the_corpus_tokens_and_sep(tmp_path):
    task = prepared(tmp_path)
    t, tokens = task.tokenizer, task.files["val"].tokens
    starts = task.val_starts[:2]
    blocks = task._blocks("val", starts)
    assert blocks.shape == (2, 24)  # data.block_size
    assert (blocks[:, 0] == t.cls_id).all() and (blocks[:, -1] == t.sep_id).all()
    for row, s in zip(blocks, starts, strict=True):
        assert row[1:-1].tolist() == [int(x) for x in tokens[s : s + 22]]


def test_the_corruption_never_chooses_special_tokens(tmp_path):
    task = prepared(tmp_path)
    t = task.tokenizer
    ids = task._blocks("val", task.val_starts[:4])
    ids[:, 5], ids[:, 6] = t.pad_id, t.unk_id  # specials inside the text are not chosen either
    special = torch.isin(ids, torch.tensor([t.cls_id, t.sep_id, t.pad_id, t.unk_id]))
    assert special[:, [0, 5, 6, -1]].all()  # ([SEP] also separates the documents)
    chosen_any = torch.zeros_like(special)
    for seed in range(60):
        inputs, labels = task._corrupt(ids, seed)
        chosen = labels != -100
        assert not chosen[special].any() and torch.equal(inputs[special], ids[special])
        chosen_any |= chosen
    assert chosen_any[~special].all()  # every other position gets its turn


def test_whole_word_masking_uses_the_tokenizers_word_pieces(tmp_path):
    rng = random.Random(0)  # many made-up words: a 120-piece vocabulary splits them
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi"]
    words = ["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(400)]
    corpus = tmp_path / "words.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=6)) for _ in range(300)) + "\n")
    task = prepared(tmp_path, **{"masking.whole_word": True, "masking.probability": 0.4,
                                 "model.base": "scratch", "model.preset": "tiny",
                                 "tokenizer.vocab_size": 120, "data.source": str(corpus)})  # fmt: skip
    ids = task._blocks("train", list(range(0, len(task.files["train"].tokens) - 23, 22)))
    _, labels = task._corrupt(ids, 0)
    chosen = labels != -100
    t = task.tokenizer
    after_special = torch.isin(ids[:, :-1], torch.tensor([t.cls_id, t.sep_id, t.pad_id]))
    follows = task.continuation[ids[:, 1:]] & ~after_special  # "##" continues the word before
    assert follows.any() and torch.equal(chosen[:, 1:][follows], chosen[:, :-1][follows])


def test_held_out_masked_lm_losses_do_not_depend_on_the_batching(tmp_path):
    task = prepared(tmp_path, **{"train.eval_batch_size": 3})
    model = task.model.eval()
    with torch.no_grad():
        together = task.evaluate(model, "val", [0, 1, 2, 3, 4], CPU)  # batches of 3 and 2
        alone = {i: task.evaluate(model, "val", [i], CPU)[i] for i in range(5)}
    assert list(together) == [0, 1, 2, 3, 4]
    for i in range(5):
        assert together[i][0] == pytest.approx(alone[i][0], rel=1e-4)
        assert together[i][1] == alone[i][1] > 0  # the masked tokens of that block
    metrics = task.summarize("val", together)
    total, count = sum(v[0] for v in together.values()), sum(v[1] for v in together.values())
    assert metrics["masked_tokens"] == count and metrics["loss"] == pytest.approx(total / count)


def test_a_denoising_pair_is_the_infilled_source_and_the_original_target(tmp_path):
    task = prepared(tmp_path, DenoisingTask, DenoisingConfig)
    t = task.tokenizer
    starts = task.val_starts[:3]
    src, mask, tgt_in, labels = task._pairs("val", starts, [1, 2, 3])
    body = task._blocks("val", starts)[:, 1:-1]
    assert torch.equal(labels[:, :-1], body) and (labels[:, -1] == t.sep_id).all()
    assert (tgt_in[:, 0] == t.sep_id).all() and torch.equal(tgt_in[:, 1:], labels[:, :-1])
    assert (src[:, 0] == t.cls_id).all() and torch.equal(mask, (src != t.pad_id).long())
    lengths = mask.sum(1)
    assert lengths.min() < src.size(1) == lengths.max()  # the shorter rows padded
    for row, n in zip(src, lengths, strict=True):
        assert row[n - 1] == t.sep_id and (row[: n - 1] == t.mask_id).any()  # spans masked
    # the spans come from each example's own seed, not from the global generator: the
    # held-out corruption is the same at every evaluation
    from torchformer.data.masking import infill_spans

    torch.manual_seed(0)
    first = task._pairs("val", starts, [1, 2, 3])
    torch.manual_seed(1)
    again = task._pairs("val", starts, [1, 2, 3])
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    expected = [t.cls_id, *infill_spans(body[0].tolist(), config=task.config.masking,
                                        mask_id=t.mask_id,
                                        generator=torch.Generator().manual_seed(1)), t.sep_id]  # fmt: skip
    assert src[0, : len(expected)].tolist() == expected


def test_held_out_denoising_losses_do_not_depend_on_the_batching(tmp_path):
    task = prepared(tmp_path, DenoisingTask, DenoisingConfig)
    model = task.model.eval()
    with torch.no_grad():
        together = task.evaluate(model, "val", [0, 1, 2, 3], CPU)
        alone = {i: task.evaluate(model, "val", [i], CPU)[i] for i in range(4)}
    for i in range(4):
        assert together[i][0] == pytest.approx(alone[i][0], rel=1e-4)  # the padding is masked
        assert together[i][1] == alone[i][1] == 23  # 22 corpus tokens and [SEP]


def test_a_given_tokenizer_without_a_mask_token_is_refused_naming_it(tmp_path):
    from torchformer.data.records import DataError
    from torchformer.text.lm_tokenizers import train_char_tokenizer

    path = tmp_path / "chars.json"
    train_char_tokenizer(["the king and a rose"]).save(path)
    with pytest.raises(DataError, match=r"cls_id, sep_id, mask_id") as e:
        prepared(tmp_path, **{"model.base": "scratch", "model.preset": "tiny",
                              "tokenizer.path": str(path)})  # fmt: skip
    assert e.value.file == str(path) and e.value.field == "tokenizer.path"


def test_a_fresh_scratch_run_trains_its_own_tokenizer_over_one_left_in_the_run(tmp_path):
    from torchformer.text.tokenizer import Tokenizer

    run = tmp_path / "run"
    run.mkdir()
    Tokenizer.train_wordpiece(["zzz yyy xxx"] * 5, vocab_size=40).save(run / "tokenizer.json")
    task = prepared(tmp_path, **{"model.base": "scratch", "model.preset": "tiny",
                                 "tokenizer.vocab_size": 120})  # fmt: skip
    assert task.tokenizer.token_to_id("king") is not None  # learnt from this corpus


def test_a_split_shorter_than_one_block_is_an_error_naming_the_source(tmp_path):
    from torchformer.data.records import DataError

    corpus = tmp_path / "short.txt"  # every 10th line held out: two words
    lines = ("king" if i % 10 == 0 else "the king and a rose and my lord" for i in range(20))
    corpus.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(DataError, match=r"the val split has \d+ tokens, fewer than one block") as e:
        prepared(tmp_path, **{"data.source": str(corpus)})
    assert e.value.file == str(corpus) and e.value.field == "data.source"


def test_a_denoising_batch_masks_the_padding_of_its_sources(tmp_path):
    task = prepared(tmp_path, DenoisingTask, DenoisingConfig)
    t = task.tokenizer
    seen = {}

    class Spy:
        def __call__(self, src, tgt_in, **kwargs):
            seen.update(kwargs, src=src, tgt_in=tgt_in)
            return type("Out", (), {"loss": torch.tensor(1.5)})()

    starts = task.val_starts[:4]
    assert task.batch_loss(Spy(), starts, CPU).item() == 1.5
    src = seen["src"]
    assert torch.equal(seen["src_mask"], (src != t.pad_id).long())
    assert (seen["src_mask"] == 0).any()  # the infilled sources differ in length
    assert torch.equal(seen["tgt_in"][:, 0], torch.full((4,), t.sep_id))
    assert (seen["labels"][:, -1] == t.sep_id).all()


def test_a_denoising_preset_must_be_a_bart_one(tmp_path):
    with pytest.raises(ValueError, match=r"model\.preset 't5-tiny' is not a BART preset"):
        prepared(tmp_path, DenoisingTask, DenoisingConfig, **{"model.preset": "t5-tiny"})


def test_a_scratch_runs_tokenizer_keeps_to_the_configured_vocabulary_size(tmp_path):
    small = prepared(tmp_path / "a", **{"model.base": "scratch", "model.preset": "tiny",
                                        "tokenizer.vocab_size": 50})  # fmt: skip
    large = prepared(tmp_path / "b", **{"model.base": "scratch", "model.preset": "tiny",
                                        "tokenizer.vocab_size": 400})  # fmt: skip
    assert small.tokenizer.vocab_size <= 50 < large.tokenizer.vocab_size <= 400


def test_a_base_whose_tokenizer_has_no_mask_token_is_named_as_model_base(tmp_path):
    from torchformer.data.records import DataError
    from torchformer.text.lm_tokenizers import train_char_tokenizer

    base = tmp_path / "base"
    base.mkdir()
    train_char_tokenizer(["the king and a rose"]).save(base / "tokenizer.json")
    with pytest.raises(DataError, match=r"the tokenizer has no cls_id, sep_id, mask_id") as e:
        prepared(tmp_path, **{"model.base": str(base)})
    assert e.value.file == str(base) and e.value.field == "model.base"


def test_the_masked_lm_perplexity_is_capped(tmp_path):
    task = prepared(tmp_path)
    huge = task.summarize("val", {0: (1000.0 * 5, 5), 1: (1000.0 * 3, 3)})
    assert huge["loss"] == pytest.approx(1000.0) and huge["masked_tokens"] == 8.0
    assert huge["ppl"] == pytest.approx(math.exp(50))


def test_held_out_blocks_are_scored_once_in_chunks_on_the_given_device(tmp_path):
    task = prepared(tmp_path, **{"train.eval_batch_size": 2})
    seen = []

    def held_out_losses(model, starts, device):
        seen.append((starts, device))
        return [1.0] * len(starts), [1] * len(starts)

    task.held_out_losses = held_out_losses
    out = task.evaluate(None, "val", [0, 1, 2, 3, 4], torch.device("meta"))
    s = task.val_starts
    assert [starts for starts, _ in seen] == [[s[0], s[1]], [s[2], s[3]], [s[4]]]
    assert sorted(out) == [0, 1, 2, 3, 4]
    assert {device for _, device in seen} == {torch.device("meta")}
