"""Training throughput of the RNN encoder–decoder vs the Transformer, in one run.

The seeds' central claim — a Transformer processes the target sequence in parallel while
an RNN decoder must walk it one position after another — as a number: target tokens
trained per second by ``rnn-small-cpu`` (Bahdanau et al. 2015) and by
``transformer-small-cpu`` (7.5M and 7.6M parameters), on the same Multi30k batches.

Both models get the translation task's recipe pieces: one joint 8k BPE vocabulary trained
on the training sentences, token-budget batches of similar lengths (4,096 padded tokens
by default, the shipped configs' ``max_tokens``), teacher forcing, label-smoothed
cross-entropy, Adam, gradient clipping, each model's own dropout. A step is forward,
loss, backward, clipping and the optimizer step. The two models alternate on every batch
(and alternate which goes first), so that a change in machine load hits both; the first
``--warmup`` batches are not timed. The ratio is RNN tokens/s over Transformer tokens/s.

    TORCHFORMER_DATA=../shared/data python -m torchformer.bench.seq2seq_throughput \\
        --steps 40 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from torchformer.bench.attention import _machine
from torchformer.data.batching import TokenBudgetBatchSampler, pad_batch
from torchformer.data.parallel import read_multi30k
from torchformer.models.rnn_seq2seq import RNNSeq2Seq, rnn_preset
from torchformer.models.seq2seq import Seq2Seq, preset, sequence_loss
from torchformer.text.tokenizer import Tokenizer


def _tokenizer(path: Path | None, pairs) -> Tokenizer:
    if path is not None:
        return Tokenizer.from_file(path)
    texts = [p.src for p in pairs] + [p.tgt for p in pairs]
    return Tokenizer.train_bpe(texts, vocab_size=8000, min_frequency=2, lowercase=False)


def _models(tok: Tokenizer, max_len: int) -> dict[str, torch.nn.Module]:
    ids = {
        "vocab_size": tok.vocab_size,
        "max_len": max_len,
        "pad_id": tok.pad_id,
        "decoder_start_id": tok.bos_id,
        "eos_id": tok.eos_id,
    }
    return {
        "transformer": Seq2Seq(preset("transformer-small-cpu", dropout=0.2, **ids)),
        "rnn": RNNSeq2Seq(rnn_preset("rnn-small-cpu", dropout=0.3, **ids)),
    }


def _step(model, optimizer, batch, pad_id: int) -> None:
    src, src_mask, tgt_in, tgt_mask, labels = batch
    logits = model(src, tgt_in, src_mask=src_mask, tgt_mask=tgt_mask).logits  # (B, T, V)
    loss = sequence_loss(logits, labels, pad_id=pad_id, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    pairs = read_multi30k(args.data_dir, "train", "de", "en")[: args.samples]
    tok = _tokenizer(args.tokenizer, pairs)
    src = tok.encode_batch([p.src for p in pairs], max_length=None)
    tgt = tok.encode_batch([p.tgt for p in pairs], max_length=None)  # <s> ... </s>
    keep = [i for i in range(len(pairs)) if max(len(src[i]), len(tgt[i])) <= args.max_len]
    lengths = [max(len(src[i]), len(tgt[i])) for i in keep]
    sampler = TokenBudgetBatchSampler(lengths, args.max_tokens, seed=args.seed)
    models = _models(tok, args.max_len)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    tokens = 0
    for n, positions in enumerate(sampler):
        if n == args.warmup + args.steps:
            break
        rows = [keep[p] for p in positions]
        s, s_mask = pad_batch([src[i] for i in rows], tok.pad_id)  # (B, S)
        t, t_mask = pad_batch([tgt[i] for i in rows], tok.pad_id)  # (B, T + 1)
        batch = (s, s_mask, t[:, :-1], t_mask[:, :-1], t[:, 1:])
        order = list(models) if n % 2 == 0 else list(reversed(models))
        for name in order:
            start = time.perf_counter()
            _step(models[name], optimizers[name], batch, tok.pad_id)
            if n >= args.warmup:
                seconds[name] += time.perf_counter() - start
        if n >= args.warmup:
            tokens += int(t_mask[:, 1:].sum())
    per_s = {name: tokens / seconds[name] for name in models}
    return {
        "timed_batches": args.steps,
        "target_tokens": tokens,
        "max_tokens": args.max_tokens,
        "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
        "seconds": seconds,
        "tokens_per_s": per_s,
        "rnn_vs_transformer_tokens_per_s_ratio": per_s["rnn"] / per_s["transformer"],
        "machine": _machine(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="torchformer bench seq2seq-throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-dir", default=None, help="default: $TORCHFORMER_DATA")
    parser.add_argument("--tokenizer", type=Path, default=None, help="default: train 8k BPE")
    parser.add_argument("--samples", type=int, default=None, help="first N pairs (default all)")
    parser.add_argument("--steps", type=int, default=40, help="timed batches")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--max-len", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
