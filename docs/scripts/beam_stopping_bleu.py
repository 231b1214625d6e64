"""Test BLEU of a trained translation run's selected model under each beam-stopping rule.

    python docs/scripts/beam_stopping_bleu.py runs/multi30k-rnn [--beam-size 5]

Decodes Multi30k test_2016_flickr (TORCHFORMER_DATA) with ``early_stopping`` True (stop at
``beam`` finished hypotheses), "heuristic" (HF's default, ours since it) and False (the
exact bound), and prints sacreBLEU/chrF, hypothesis length and decoding time for each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torchformer
from torchformer.data.parallel import read_multi30k
from torchformer.evaluate.bleu import corpus_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--split", default="test_2016_flickr")
    args = parser.parse_args()
    selected = json.loads((args.run / "selected_model.json").read_text())["model"]
    translator = torchformer.load(args.run / selected)
    pairs = read_multi30k(split=args.split)
    src, ref = [p.src for p in pairs], [p.tgt for p in pairs]
    out = {"run": str(args.run), "model": selected, "split": args.split, "beam": args.beam_size}
    for mode in (True, "heuristic", False):
        start = time.perf_counter()
        hyps = translator.translate(
            src, beam_size=args.beam_size, early_stopping=mode, batch_size=64
        )
        seconds = time.perf_counter() - start
        scores = corpus_scores(hyps, ref)
        out[str(mode)] = {"bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
                          "hyp_len": scores["hyp_len"], "decode_s": round(seconds, 1)}  # fmt: skip
        print(json.dumps({str(mode): out[str(mode)]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
