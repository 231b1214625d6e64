"""A loaded translation model: encoder–decoder + source/target tokenizers, and ``translate()``.

The public inference object of the translation task. A translation model directory
(a run's ``best/``) holds:

- ``config.json`` + ``model.safetensors``: the ``Seq2Seq`` model in our own layout
  (``model_type: "torchformer-transformer"``, see ``checkpoints.t5``), or the RNN
  encoder–decoder (``"torchformer-rnn"``, ``checkpoints.rnn``), or T5/BART in HF layout;
- ``source_tokenizer.json`` and ``target_tokenizer.json`` (the same file twice for a
  joint vocabulary);
- ``translation.json``: languages and decoding defaults (beam size, length penalty,
  how far an output may outgrow its source).

Decoding (greedy or batched beam search, ``torchformer.generate``) uses the KV cache;
``use_cache=False`` recomputes the whole prefix at every step instead, which gives the
same result and exists to measure what the cache saves.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.checkpoints.hf import resolve_model_dir
from torchformer.data.batching import pad_batch
from torchformer.evaluate.bleu import corpus_scores
from torchformer.evaluate.rouge import rouge_scores
from torchformer.generate.beam import beam_search, check_early_stopping
from torchformer.generate.generation import PrefixCache, uncached_seq2seq_step
from torchformer.generate.greedy import greedy_decode
from torchformer.io import JsonSettings, recover_dir
from torchformer.models.rnn_seq2seq import RNNSeq2Seq
from torchformer.models.seq2seq import Seq2Seq
from torchformer.tasks.classifier import validate_texts
from torchformer.tasks.translate_data import SOURCE_TOKENIZER, TARGET_TOKENIZER, EncodedPairs
from torchformer.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SETTINGS_NAME = "translation.json"


@dataclass
class TranslationSettings(JsonSettings):
    """Languages, the source prefix and decoding defaults; saved next to the weights as
    ``translation.json``.

    ``source_prefix``: put before every text given to ``translate()`` (T5's task prefix).

    ``max_len_offset``: an output may have at most (longest source in the batch +
    this) tokens, capped by the model's ``max_len`` (Vaswani et al. 2017, 6.1: input + 50).

    ``early_stopping``: when beam search stops an input (``generate.beam``): ``"heuristic"``
    (HF's default) keeps going while the best live beam is ahead of the finished ones.
    """

    FILE_NAME: ClassVar[str] = SETTINGS_NAME
    task: str = "translation"
    src_lang: str | None = None
    tgt_lang: str | None = None
    source_prefix: str = ""
    beam_size: int = 5
    length_penalty: float = 1.0
    max_len_offset: int = 50
    early_stopping: bool | str = "heuristic"


def _banning(step, banned: torch.Tensor):
    """``step`` with the ``banned`` token ids' logits set to -inf."""

    def banned_step(last_ids: Tensor, cache) -> Tensor:
        logits = step(last_ids, cache)  # (N, V)
        logits[:, banned] = float("-inf")
        return logits

    return banned_step


@torch.inference_mode()
def generate_ids(
    model: Seq2Seq | RNNSeq2Seq,
    sources: list[list[int]],
    *,
    beam_size: int = 1,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = "heuristic",
    use_cache: bool = True,
    banned_ids: tuple[int, ...] = (),
) -> list[list[int]]:
    """Translate a batch of source id sequences; returns target ids without ``<s>``/``</s>``.

    ``beam_size`` 1 is greedy decoding. The model should be in eval mode. ``banned_ids``
    (padding, start, unknown) are never generated: label smoothing gives them a little
    probability, and a hypothesis spending a step on one would lose a word on decoding.
    """
    cfg = model.config
    device = next(model.parameters()).device
    src, src_mask = pad_batch(sources, cfg.pad_id)  # (B, S)
    src, src_mask = src.to(device), src_mask.to(device)
    context = model.encode(src, src_mask=src_mask).last_hidden_state  # (B, S, D)
    start = torch.full(
        (len(sources), 1), cfg.decoder_start_id, dtype=torch.long, device=device
    )  # (B, 1)
    if use_cache:
        step, cache = model.make_step(context, src_mask), model.new_cache()
    else:
        step, cache = uncached_seq2seq_step(model, context, src_mask), PrefixCache()
    if banned := sorted(set(banned_ids) - {cfg.eos_id}):
        step = _banning(step, torch.tensor(banned, dtype=torch.long, device=device))
    if beam_size == 1:
        out = greedy_decode(
            step,
            start,
            max_new_tokens=max_new_tokens,
            eos_id=cfg.eos_id,
            pad_id=cfg.pad_id,
            cache=cache,
        )
        rows = [row[1:] for row in out.tolist()]  # drop the start token
    else:
        hyps = beam_search(
            step,
            start,
            cache=cache,
            beam_size=beam_size,
            max_new_tokens=max_new_tokens,
            eos_id=cfg.eos_id,
            pad_id=cfg.pad_id,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )
        rows = [h[0].ids for h in hyps]
    return [row[: row.index(cfg.eos_id)] if cfg.eos_id in row else row for row in rows]


class Translator:
    """A trained (or loaded) translation model ready for ``translate()``.

    Args:
        model: a ``Seq2Seq`` or ``RNNSeq2Seq`` model.
        src_tokenizer / tgt_tokenizer: its tokenizers (the same object for a joint vocabulary).
        settings: languages and decoding defaults.
    """

    def __init__(
        self,
        model: Seq2Seq | RNNSeq2Seq,
        src_tokenizer: Tokenizer,
        tgt_tokenizer: Tokenizer,
        settings: TranslationSettings | None = None,
    ) -> None:
        self.model = model.eval()
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.settings = settings or TranslationSettings()

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **overrides) -> Translator:
        """Load a translation model directory (a run's ``best/``, or the run); ``overrides`` change
        the model config's fields (e.g. a Transformer's ``attn_impl``).

        Raises:
            FileNotFoundError: a tokenizer file is missing.
            CheckpointError: not an encoder–decoder model directory.
        """
        model_dir = run_model_dir(resolve_model_dir(path))
        model, _ = load_pretrained(model_dir, task="seq2seq_lm", **overrides)
        src_tok = Tokenizer.from_file(model_dir / SOURCE_TOKENIZER)
        tgt_tok = Tokenizer.from_file(model_dir / TARGET_TOKENIZER)
        return cls(model, src_tok, tgt_tok, TranslationSettings.read(model_dir))

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """Target ids a translation never contains: padding, the start token, unknown."""
        cfg, unk = self.model.config, self.tgt_tokenizer.unk_id
        return tuple(i for i in (cfg.pad_id, cfg.decoder_start_id, unk) if i is not None)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write model, both tokenizers and the settings (see the module docstring)."""
        return write_model_dir(
            out_dir, self.model, self.src_tokenizer, self.tgt_tokenizer, self.settings
        )

    def max_new_tokens(self, sources: list[list[int]], max_len: int | None) -> int:
        """The output budget of a batch: ``max_len`` or longest source + offset, within the model's limit."""
        limit = self.model.config.max_len
        wanted = (
            max_len
            if max_len is not None
            else max(map(len, sources)) + self.settings.max_len_offset
        )
        return max(1, min(wanted, limit))

    def translate(
        self,
        texts: list[str] | str,
        *,
        beam_size: int | None = None,
        max_len: int | None = None,
        batch_size: int = 32,
        length_penalty: float | None = None,
        early_stopping: bool | str | None = None,
        use_cache: bool = True,
    ) -> list[str] | str:
        """Translate one text (returns a string) or a list of texts (returns a list).

        Args:
            beam_size: 1 for greedy decoding (default: the model directory's, usually 5).
            max_len: most output tokens (default: source length + ``max_len_offset``);
                capped by the model's maximum length.
            batch_size: sentences decoded together (sorted by length, order restored).
            length_penalty: alpha of the beam score / length ** alpha.
            early_stopping: when beam search stops (default: the model directory's,
                ``"heuristic"``; True: at ``beam_size`` finished hypotheses; False: the
                exact bound; ``generate.beam`` says more).
            use_cache: decode with the KV cache (False: recompute the prefix; slower).

        Raises:
            TypeError / ValueError: a non-string or empty text, naming its index.
        """
        single = isinstance(texts, str)
        texts = validate_texts(texts)
        beam = beam_size or self.settings.beam_size
        alpha = self.settings.length_penalty if length_penalty is None else length_penalty
        stopping = check_early_stopping(
            self.settings.early_stopping if early_stopping is None else early_stopping
        )
        prefix = self.settings.source_prefix
        sources = self.src_tokenizer.encode_batch(
            [prefix + text for text in texts], max_length=self.model.config.max_len
        )
        order = sorted(range(len(texts)), key=lambda i: len(sources[i]))
        outputs: list[str] = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = [sources[i] for i in idx]
            ids = generate_ids(
                self.model,
                batch,
                beam_size=beam,
                max_new_tokens=self.max_new_tokens(batch, max_len),
                length_penalty=alpha,
                early_stopping=stopping,
                use_cache=use_cache,
                banned_ids=self.banned_ids,
            )
            for i, text in zip(idx, self.tgt_tokenizer.decode_batch(ids)):
                outputs[i] = text
        return outputs[0] if single else outputs


SELECTION_FILE = "selected_model.json"


def run_model_dir(path: Path) -> Path:
    """The model directory of ``path``: itself when it is one; for a run directory, the model
    the run selected on validation (``selected_model.json``: ``best`` or ``averaged``),
    else ``best/``. Finishes an interrupted replacement of either first."""
    for name in ("best", "averaged"):
        recover_dir(path / name)
    if not (path / "best" / "config.json").is_file():
        return path
    selection, name = path / SELECTION_FILE, "best"
    if selection.is_file():
        chosen = json.loads(selection.read_text(encoding="utf-8")).get("model")
        if chosen in ("best", "averaged") and (path / chosen / "config.json").is_file():
            name = chosen
        else:
            logger.warning("%s names %r, not a model of the run; using best/", selection, chosen)
    return path / name


def write_model_dir(
    out_dir: str | os.PathLike,
    model: Seq2Seq | RNNSeq2Seq,
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    settings: TranslationSettings,
) -> Path:
    """Write a translation model directory (works on a model in training mode too)."""
    out = save_pretrained(model, out_dir)
    src_tokenizer.save(out / SOURCE_TOKENIZER)
    tgt_tokenizer.save(out / TARGET_TOKENIZER)
    settings.write(out)
    return out


# --- evaluation ---------------------------------------------------------------------------


def translate_split(
    translator: Translator,
    pairs: EncodedPairs,
    *,
    beam_size: int,
    batch_size: int = 64,
    limit: int | None = None,
    rouge: bool = False,
) -> tuple[list[str], dict]:
    """Decode a split's sources; returns the hypotheses and their sacreBLEU/chrF (and ROUGE)
    scores."""
    n = len(pairs) if limit is None else min(limit, len(pairs))
    was_training = translator.model.training
    translator.model.eval()
    hyps = translator.translate(pairs.src_texts[:n], beam_size=beam_size, batch_size=batch_size)
    translator.model.train(was_training)
    scores = corpus_scores(hyps, pairs.tgt_texts[:n])
    if rouge:
        scores.update(rouge_scores(hyps, pairs.tgt_texts[:n]))
    return hyps, scores


def evaluate_translator(
    translator: Translator,
    pairs: EncodedPairs,
    out_dir: Path,
    *,
    beam_size: int,
    batch_size: int,
    rouge: bool = False,
) -> dict:
    """Greedy and beam-search BLEU/chrF (and ROUGE) of one split; writes ``scores.json`` and
    hypotheses."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"num_sentences": len(pairs)}
    for name, beam in (("greedy", 1), (f"beam{beam_size}", beam_size)):
        start = time.perf_counter()
        hyps, scores = translate_split(
            translator, pairs, beam_size=beam, batch_size=batch_size, rouge=rouge
        )
        scores["decode_s"] = time.perf_counter() - start
        (out_dir / f"hypotheses.{name}.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
        result[name] = scores
    (out_dir / "scores.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
