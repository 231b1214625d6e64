"""CLI of the translation task: ``translate`` and ``evaluate-translation``.

Training goes through the shared ``torchformer train CONFIG`` (a YAML with
``task: translation`` goes through the task registry to ``tasks.translate``).

    torchformer translate runs/multi30k-small "Ein Hund läuft im Park."
    torchformer translate runs/multi30k-small --file src.de --out hyp.en --beam-size 5
    torchformer evaluate-translation runs/multi30k-small --multi30k test_2016_flickr
    torchformer evaluate-translation runs/multi30k-small --src test.de --ref test.en --name mytest
    torchformer evaluate-translation runs/qa --pairs test.jsonl --src-column question \
        --tgt-column answer --rouge
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate texts with a trained translation model")
    p.add_argument("run", type=Path, help="run directory (or its best/ model directory)")
    p.add_argument("texts", nargs="*", help="sentences to translate")
    p.add_argument("--file", type=Path, help="one source sentence per line")
    p.add_argument(
        "--out", type=Path, help="write the translations here, one per line (default: print)"
    )
    _decoding_options(p)
    p.set_defaults(func=translate_command)

    p = sub.add_parser(
        "evaluate-translation",
        help="BLEU/chrF (sacreBLEU, and ROUGE) of a translation/text-to-text model on a parallel set",
    )
    p.add_argument("run", type=Path, help="run directory (or a model directory inside it)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--src", type=Path, help="source sentences, one per line (with --ref)")
    source.add_argument(
        "--multi30k", metavar="SPLIT", help="a Multi30k split: val or test_2016_flickr"
    )
    source.add_argument(
        "--pairs", type=Path, help="a CSV, TSV, JSON Lines or JSON file of (source, target) pairs"
    )
    p.add_argument("--src-column", default="src", help="--pairs: the source column or key")
    p.add_argument("--tgt-column", default="tgt", help="--pairs: the target column or key")
    p.add_argument("--rouge", action="store_true", help="also ROUGE-1/2/L/Lsum (rouge-score)")
    p.add_argument("--ref", type=Path, help="reference translations, line-aligned with --src")
    p.add_argument(
        "--name",
        help="output folder under RUN/eval/: a plain name (no '/', '..' or absolute path); "
        "default: from the file or split name",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace RUN/eval/NAME when it exists (without it the command refuses)",
    )
    _decoding_options(p)
    p.set_defaults(func=evaluate_command)


def _decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--beam-size", type=int, default=None, help="1 = greedy (default: the model's, usually 5)"
    )
    p.add_argument(
        "--max-len", type=int, default=None, help="most output tokens (default: source length + 50)"
    )
    p.add_argument(
        "--length-penalty", type=float, default=None, help="alpha of score / length ** alpha"
    )
    p.add_argument("--batch-size", type=int, default=32)


def _decoding(args: argparse.Namespace) -> dict:
    return {
        "beam_size": args.beam_size,
        "max_len": args.max_len,
        "length_penalty": args.length_penalty,
        "batch_size": args.batch_size,
    }


def _load(run: Path):
    from torchformer.api import load

    return load(run)


def translate_command(args: argparse.Namespace) -> int:
    lines = list(args.texts)
    if args.file:
        from torchformer.data.tabular import read_lines

        lines += [line.strip() for line in read_lines(args.file)]
    texts = [line for line in lines if line]
    if not texts:
        print("error: give sentences or --file", file=sys.stderr)
        return 2
    translator = _load(args.run)
    start = time.perf_counter()
    translated = iter(translator.translate(texts, **_decoding(args)))
    seconds = time.perf_counter() - start
    # A blank input line stays a blank output line: --out lines up with --file.
    translations = [next(translated) if line else "" for line in lines]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(translations) + "\n", encoding="utf-8")
        print(
            f"{len(texts)} sentences translated in {seconds:.1f} s ({len(texts) / seconds:.1f} sentences/s) "
            f"-> {args.out}",
            file=sys.stderr,
        )
    else:
        for line in translations:
            print(line)
    return 0


def _read_pairs(args: argparse.Namespace, translator):
    from torchformer.data.parallel import read_multi30k, read_parallel, read_parallel_table

    if args.pairs:
        pairs = read_parallel_table(args.pairs, args.src_column, args.tgt_column)
        return pairs, args.pairs.name.replace(".", "_")
    if args.multi30k:
        s = translator.settings
        return read_multi30k(
            None, args.multi30k, s.src_lang or "de", s.tgt_lang or "en"
        ), args.multi30k
    if args.ref is None:
        raise SystemExit("error: --src needs --ref")
    return read_parallel(args.src, args.ref), args.src.name.replace(".", "_")


def evaluate_command(args: argparse.Namespace) -> int:
    from torchformer.cli.classify import evaluation_dir
    from torchformer.evaluate.bleu import corpus_scores

    run_dir = args.run if (args.run / "best").is_dir() else args.run.parent
    default = args.pairs or args.src or args.multi30k
    out = evaluation_dir(
        run_dir, str(default).replace(".", "_"), args.name, overwrite=args.overwrite
    )
    translator = _load(args.run)
    pairs, _ = _read_pairs(args, translator)
    start = time.perf_counter()
    hyps = translator.translate([p.src for p in pairs], **_decoding(args))
    seconds = time.perf_counter() - start
    scores = corpus_scores(hyps, [p.tgt for p in pairs])
    if args.rouge:
        from torchformer.evaluate.rouge import rouge_scores

        scores.update(rouge_scores(hyps, [p.tgt for p in pairs]))
    scores.update(
        num_sentences=len(pairs),
        decode_s=seconds,
        beam_size=args.beam_size or translator.settings.beam_size,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypotheses.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    print(f"BLEU = {scores['bleu']:.2f}  {scores['bleu_signature']}")
    print(f"chrF = {scores['chrf']:.2f}  {scores['chrf_signature']}")
    if args.rouge:
        rouge = ", ".join(
            f"{k} {scores[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")
        )
        print(f"ROUGE: {rouge}  {scores['rouge_signature']}")
    print(
        f"{len(pairs)} sentences, beam {scores['beam_size']}, {len(pairs) / seconds:.1f} sentences/s; "
        f"written to {out}"
    )
    return 0
