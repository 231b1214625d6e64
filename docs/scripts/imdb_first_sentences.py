"""Short texts for the deployment bench: the first sentence of IMDB test reviews.

    python docs/scripts/imdb_first_sentences.py --n 1000 --out runs/imdb-first-sentences.jsonl
    torchformer bench RUN --texts-file runs/imdb-first-sentences.jsonl --paths all

The same balanced sample as the bench's default (seed 0), each review cut to its first
sentence (HTML line breaks removed; a sentence ends at ``.``, ``!`` or ``?`` followed by
a space; sentences shorter than 5 words take the next one too), with the review's label
(which a first sentence often does not decide: the accuracy column is for agreement
between paths, not a measure of the model).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from torchformer.data.imdb import balanced_sample, find_imdb, read_imdb
from torchformer.io import atomic_write_text

_END = re.compile(r"(?<=[.!?])\s+")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def first_sentence(text: str, min_words: int = 5) -> str:
    """The first sentence of ``text`` (with the next ones while under ``min_words``)."""
    parts = _END.split(_BR.sub(" ", text).strip())
    out = ""
    for part in parts:
        out = f"{out} {part}".strip()
        if len(out.split()) >= min_words:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    records = balanced_sample(read_imdb(find_imdb(), split="test"), args.n, seed=args.seed)
    rows = [{"text": first_sentence(r.text), "label": r.label} for r in records]
    atomic_write_text(args.out, "".join(json.dumps(row) + "\n" for row in rows))
    words = sorted(len(r["text"].split()) for r in rows)
    print(f"wrote {len(rows)} first sentences to {args.out}; median {words[len(words) // 2]} words")


if __name__ == "__main__":
    main()
