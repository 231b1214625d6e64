"""Generation speed: our cached greedy decoding vs ``transformers`` ``generate()`` on the
same GPT-2 weights, and the KV cache's speed-up, in one run.

A GPT-2 checkpoint (``--model DIR``, a Hugging Face GPT-2 directory; default: GPT-2
small's shapes, 124M parameters, randomly initialised with a fixed seed and saved by
``transformers``) is loaded by both libraries. For each batch size, ``--new-tokens``
tokens are generated greedily after random prompts of ``--prompt-len`` tokens, with
no end token (every run makes exactly that many tokens), by:

- ours: ``torchformer.generate.generate`` with the KV cache;
- transformers: ``GPT2LMHeadModel.generate`` (its default SDPA attention and cache);
- ours without the cache (``use_cache=False``: the prefix is re-run at every step).

The three are timed in turn, in a fresh seeded order every repeat (``bench.deploy.
call_order``: a rotation keeps each path behind the same neighbour), so that drift and
other load hit them alike. Reported: tokens/s (batch * new tokens / seconds, medians), the
ratio ours / transformers, the cache's speed-up (cached / uncached tokens/s), and
whether ours and transformers produced the same tokens.

    python -m torchformer.bench.generate_speed --batch-sizes 1 8 --new-tokens 128 --out g.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from torchformer.bench.deploy import call_order
from torchformer.bench.encoder_speed import machine
from torchformer.checkpoints import load_pretrained
from torchformer.generate import generate


def _gpt2_dir(model: Path | None, workdir: Path) -> Path:
    if model is not None:
        return model
    import transformers

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    hf.save_pretrained(workdir / "gpt2-random")
    return workdir / "gpt2-random"


def _time(fn, n: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(n)
    return time.perf_counter() - start, out


def _runners(ours, theirs, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """name -> fn(k): greedy decoding of exactly k new tokens (no end token)."""
    return {
        "ours": lambda k: generate(ours, ids, attention_mask=mask, max_new_tokens=k, eos_id=[]),
        "transformers": lambda k: theirs.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=k,
            min_new_tokens=k,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        ),
        "ours_no_cache": lambda k: generate(
            ours, ids, attention_mask=mask, max_new_tokens=k, eos_id=[], use_cache=False
        ),
    }


def run(args: argparse.Namespace) -> dict:
    import transformers

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = _gpt2_dir(args.model, Path(tmp))
        ours, _ = load_pretrained(path, task="causal_lm")
        theirs = transformers.GPT2LMHeadModel.from_pretrained(path)
    ours.eval(), theirs.eval()
    vocab, n = ours.config.vocab_size, args.new_tokens
    results: dict[str, dict] = {}
    for batch in args.batch_sizes:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(0, vocab - 1, (batch, args.prompt_len), generator=g)
        mask = torch.ones_like(ids)
        runners = _runners(ours, theirs, ids, mask)
        names = list(runners)
        times: dict[str, list[float]] = {name: [] for name in names}
        outputs = {}
        with torch.inference_mode():
            for name in names:  # warm-up: allocator, kernels, first-call work
                runners[name](4)
            for repeat in range(args.repeats):
                order = call_order(names, seed=batch, r=repeat, i=0)
                for name in order:
                    seconds, outputs[name] = _time(runners[name], n)
                    times[name].append(seconds)
        tokens = batch * n
        speed = {k: tokens / statistics.median(v) for k, v in times.items()}
        assert all(o.shape == (batch, args.prompt_len + n) for o in outputs.values())
        same = outputs["ours"].eq(outputs["transformers"])[:, args.prompt_len :].float().mean()
        results[f"b{batch}"] = {
            "tokens_per_s": speed,
            "seconds": times,
            "ratio_vs_transformers": speed["ours"] / speed["transformers"],
            "cache_speedup": speed["ours"] / speed["ours_no_cache"],
            "tokens_equal_to_transformers": float(same),
            "cached_equals_uncached": bool(torch.equal(outputs["ours"], outputs["ours_no_cache"])),
        }
        r = results[f"b{batch}"]
        print(
            f"batch {batch}: ours {speed['ours']:.1f} tok/s, transformers "
            f"{speed['transformers']:.1f}, ratio {r['ratio_vs_transformers']:.3f}; "
            f"cache speed-up {r['cache_speedup']:.2f}x; same tokens {same:.3f}",
            flush=True,
        )
    return {
        "benchmark": "generate_speed",
        "model": str(args.model or "GPT-2 small shapes (124M), random weights, seed 0"),
        "prompt_len": args.prompt_len,
        "new_tokens": n,
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a Hugging Face GPT-2 directory")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    summary = run(args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
