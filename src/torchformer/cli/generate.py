"""``torchformer generate``: continue a prompt with a trained language model.

    torchformer generate runs/shakespeare-char "ROMEO:" --max-new-tokens 200 --stream
    torchformer generate runs/imdb-gpt "This movie was" --top-p 0.9 --stop "<br" --seed 3
    torchformer generate runs/imdb-gpt "The plot" --greedy --no-repeat-ngram 3

Sampling defaults (temperature, top-k, seed, length) come from the model's
``language_model.json``; every option overrides them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a trained language model")
    p.add_argument("run", type=Path, help="language-model run directory or model directory")
    p.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="text to continue (default: the model's sample prompt)",
    )
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--min-new-tokens", type=int, help="no end of text before this many tokens")
    p.add_argument("--greedy", action="store_true", help="the most likely token at every step")
    p.add_argument("--num-beams", type=int, help="beam search with this many beams (no --stream)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeated tokens")
    p.add_argument(
        "--no-repeat-ngram",
        type=int,
        dest="no_repeat_ngram_size",
        help="never repeat an n-gram of this size",
    )
    p.add_argument("--stop", action="append", default=[], help="stop before this text (repeatable)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=generate_command)


OPTIONS = (
    "max_new_tokens",
    "min_new_tokens",
    "num_beams",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "seed",
)


def generate_command(args: argparse.Namespace) -> int:
    from torchformer.api import load

    model = load(args.run)
    if not hasattr(model, "stream"):
        print(
            f"error: {args.run} is not a language model ({type(model).__name__}); "
            "see `torchformer translate` / `torchformer predict`",
            file=sys.stderr,
        )
        return 2
    options = {k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None}
    prompt = model.settings.prompt if args.prompt is None else args.prompt
    try:
        pieces = model.stream(prompt, greedy=args.greedy, stop=args.stop, **options)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.stream:
        sys.stdout.write(prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(prompt + "".join(pieces))
    return 0
