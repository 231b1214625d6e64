"""``torchformer train`` (every task, through the task registry) and the classification
commands ``evaluate``, ``predict`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # src/torchformer/configs
DEMO_CONFIG = CONFIG_DIR / "imdb-demo.yaml"


def resolve_config(name: str | Path) -> Path:
    """A YAML path, or the name of a config shipped with torchformer (e.g. "imdb-minilm")."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path.stem}.yaml"
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise SystemExit(f"error: config {name} not found; shipped configs: {names}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model from a YAML config (+ --dotted.key value overrides)"
    )
    p.add_argument(
        "config",
        type=resolve_config,
        help="YAML config file, or a shipped config name (see configs/)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's newest checkpoint"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in the run directory (a fresh run refuses otherwise)",
    )
    p.set_defaults(func=train_command, accepts_overrides=True)

    p = sub.add_parser("evaluate", help="evaluate a trained classifier on labelled data")
    p.add_argument("run", type=Path, help="run directory (or its best/ model directory)")
    p.add_argument(
        "--data",
        required=True,
        help="'imdb-test', or a CSV/TSV/JSONL file; for an image classifier an image folder or "
        "archive (<split>/<label>/<file>) or 'cifar10'",
    )
    p.add_argument("--split", default="test", help="image data: the split folder (default test)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument(
        "--name",
        default=None,
        help="the output folder under RUN/eval/: a plain name (no '/', '..' or absolute "
        "path); default: the data file's name without its extension ('imdb-test' for IMDB)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace RUN/eval/NAME when it exists; without it evaluate refuses, since the "
        "folder may hold the run's own evaluation (eval/val, eval/test) or an earlier one",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="text models: bf16 autocast on CPU (as a run with train.precision bf16 "
        "evaluates; about 1.5-2x faster on AVX512-BF16/AMX CPUs), default fp32",
    )
    p.set_defaults(func=evaluate_command)

    p = sub.add_parser("predict", help="classify texts (or image files) with a trained model")
    p.add_argument("run", type=Path)
    p.add_argument("texts", nargs="*", help="texts to classify (image files for an image model)")
    p.add_argument("--file", type=Path, help="one text (or image path) per line")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=predict_command)

    p = sub.add_parser(
        "demo",
        help="the main job: fine-tune MiniLM on an IMDB sample (a few minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="where to write the run (default: the demo config's, or the next free "
        "runs/imdb-demo-N when that one holds a run)",
    )
    p.set_defaults(func=demo_command, accepts_overrides=True)


def _task_of(path: Path) -> str:
    """The ``task:`` a YAML config names ("classification" when it names none).

    Raises:
        ConfigError: the file is not UTF-8, not valid YAML or not a mapping (one line
            naming the file and the line).
    """
    from torchformer.config import read_yaml

    task = read_yaml(path).get("task", "classification")
    if not isinstance(task, str):
        raise ValueError(f"{path}: task: expected a task name, found {task!r}")
    return task


def train_command(args: argparse.Namespace) -> int:
    """Train the task the config names: registry → ``CONFIG`` → ``train``."""
    from torchformer.config import load_config
    from torchformer.tasks.registry import task_module

    name = _task_of(args.config)
    try:
        mod = task_module(name)
    except ValueError as e:  # names the known tasks; say which file asked for it
        raise ValueError(f"{args.config}: task: {e}") from None
    config = load_config(mod.CONFIG, args.config, args.overrides)
    run_dir = mod.train(config, resume=args.resume, overwrite=args.overwrite)
    write_run_report(run_dir, config)
    print(f"run written to {run_dir}")
    return 0


def write_run_report(run_dir: Path, config) -> None:
    """``report.html`` for a finished run whose config asks for one (rank 0 only)."""
    from torchformer.train.distributed import is_main_process

    finished = (Path(run_dir) / "eval").is_dir()  # not a run stopped early for a test
    if not (getattr(config, "report", False) and finished and is_main_process()):
        return
    try:
        from torchformer.viz.report import write_report
    except ImportError as e:  # viz extra (matplotlib) not installed
        print(f"no report written: {e} (pip install 'torchformer[viz]')", file=sys.stderr)
        return
    write_report(run_dir)


def _read_labelled(args: argparse.Namespace):
    if args.data == "imdb-test":
        from torchformer.data.imdb import find_imdb, read_imdb

        return read_imdb(find_imdb(), "test")
    from torchformer.data.tabular import read_table
    from torchformer.tasks.classify_data import located_records

    table = read_table(args.data, text_column=args.text_column, label_column=args.label_column)
    return located_records(table)  # ids "file:line": errors.jsonl leads back to the row


def evaluation_dir(run_dir: Path, data: str, name: str | None, *, overwrite: bool) -> Path:
    """``RUN/eval/NAME``, where ``evaluate`` writes: always inside ``eval/``, and an
    existing folder (the run's own ``val``/``test``, an earlier evaluation) only when
    ``overwrite``.

    Raises:
        ValueError: ``name`` is not a plain folder name.
        FileExistsError: the folder exists and ``overwrite`` is off.
    """
    name = name if name is not None else Path(str(data)).stem.replace(".", "_")
    if name in ("", ".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        raise ValueError(
            f"--name {name!r}: expected a plain folder name for {run_dir / 'eval'}/NAME "
            "(no '/', '\\', '..' or absolute path)"
        )
    out = run_dir / "eval" / name
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already holds an evaluation (the run's own or an earlier one); pass "
            "--name NAME to write elsewhere, or --overwrite to replace it"
        )
    return out


def evaluate_command(args: argparse.Namespace) -> int:
    from torchformer.api import load
    from torchformer.evaluate.classification import classification_report_text, write_evaluation
    from torchformer.io import replace_dir
    from torchformer.tasks.classifier import evaluate_records
    from torchformer.tasks.registry import ENSEMBLE_FILE, task_of_model_dir

    best = args.run / "best" if (args.run / "best").is_dir() else args.run
    # A run's evaluations go in the run; a model directory's in the run above it; an
    # ensemble directory keeps its own (several ensembles may share a parent).
    owns_eval = (args.run / "best").is_dir() or (args.run / ENSEMBLE_FILE).is_file()
    run_dir = args.run if owns_eval else args.run.parent
    out = evaluation_dir(run_dir, args.data, args.name, overwrite=args.overwrite)  # before the work
    task = task_of_model_dir(best)
    if task == "image_classification":
        return _evaluate_images(args, out)
    if task != "classification":  # each task evaluates with its own command
        hint = {"translation": "torchformer evaluate-translation RUN --multi30k test_2016_flickr"}
        print(
            f"error: {args.run} is a {task} run: {hint.get(task, 'see torchformer --help')}",
            file=sys.stderr,
        )
        return 2
    clf = load(args.run)
    records = _read_labelled(args)
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        result = evaluate_records(
            clf,
            records,
            batch_size=args.batch_size,
            source=args.data,
            text_field=args.text_column,
            label_field=args.label_column,
        )
    result["precision"] = args.precision
    with replace_dir(out) as tmp:  # a failure keeps the folder it was to replace
        write_evaluation(tmp, result)
    print(classification_report_text(result))
    for member in result.get("members", []):  # an ensemble: each member on the same data
        print(
            f"member {member['member']} (weight {member['weight']:.3f}): accuracy "
            f"{member['accuracy']:.4f}, macro F1 {member['macro_f1']:.4f}"
        )
    print(f"evaluation written to {out}")
    return 0


def _evaluate_images(args: argparse.Namespace, out: Path) -> int:
    """``evaluate`` for an image classifier: ``--data`` is an image folder or archive (or
    "cifar10"), ``--split`` the split folder in it."""
    import torch

    from torchformer.api import load
    from torchformer.data.images import read_image_folder
    from torchformer.evaluate.classification import (
        StreamingClassificationMetrics,
        classification_report_text,
        write_evaluation,
    )
    from torchformer.io import replace_dir

    clf = load(args.run)
    splits, classes = read_image_folder(
        args.data, splits=(args.split,), channels=clf.channels, size=clf.normalization.size
    )
    if args.split not in splits:
        print(f"error: {args.data}: no {args.split!r} split folder with images", file=sys.stderr)
        return 2
    unknown = sorted(set(classes) - set(clf.labels))
    if unknown:
        print(
            f"error: {args.data}: labels {unknown} are not among the model's labels {clf.labels}",
            file=sys.stderr,
        )
        return 2
    split = splits[args.split]
    to_model = torch.tensor([clf.labels.index(c) for c in classes])
    metrics = StreamingClassificationMetrics(clf.labels)
    with torch.inference_mode():
        for start in range(0, len(split), args.batch_size):
            pixels = split.pixels[start : start + args.batch_size]
            logits = clf.logits(pixels).float()
            labels = to_model[split.labels[start : start + args.batch_size]]
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            metrics.update(
                logits, labels, ids=split.names[start : start + args.batch_size], loss=loss
            )
    result = metrics.compute()
    with replace_dir(out) as tmp:
        write_evaluation(tmp, result)
    print(classification_report_text(result))
    print(f"evaluation written to {out}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from torchformer.api import load

    texts = list(args.texts)
    if args.file:
        from torchformer.data.tabular import read_lines

        texts += [line for line in read_lines(args.file) if line.strip()]
    if not texts:
        print("error: give texts or --file", file=sys.stderr)
        return 2
    clf = load(args.run)
    if hasattr(clf, "to_pixels"):  # an image classifier: the arguments are image files
        for name, pred in zip(texts, clf.predict(texts)):
            if args.json:
                print(json.dumps({"image": name, **pred}))
            else:
                print(f"{pred['label']:>10}  {pred['confidence']:.3f}  {name}")
        return 0
    for text, pred in zip(texts, clf.predict(texts)):
        if args.json:
            print(json.dumps({"text": text, **pred}))
        else:
            print(f"{pred['label']:>10}  {pred['confidence']:.3f}  {text[:100]}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Fine-tune the packaged MiniLM on a balanced IMDB sample and show the result."""
    from torchformer.config import load_config
    from torchformer.data.imdb import find_imdb
    from torchformer.tasks.classify import ClassifyConfig, train
    from torchformer.train.run_dir import next_free_run_dir

    try:
        find_imdb()
    except FileNotFoundError as e:
        print(f"The demo needs the IMDB reviews.\n{e}", file=sys.stderr)
        return 1
    overrides = list(args.overrides) + (["--run_dir", args.run_dir] if args.run_dir else [])
    config = load_config(ClassifyConfig, DEMO_CONFIG, overrides)
    if not args.run_dir:  # never write over an earlier demo: take the next free name
        config.run_dir = str(next_free_run_dir(config.run_dir))
    start = time.perf_counter()
    run_dir = train(config)
    write_run_report(run_dir, config)
    minutes = (time.perf_counter() - start) / 60
    _print_summary(Path(run_dir), minutes)
    return 0


def _print_summary(run_dir: Path, minutes: float) -> None:
    from torchformer.api import load

    metrics = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text(encoding="utf-8"))
    report = (run_dir / "eval" / "test" / "classification_report.txt").read_text(encoding="utf-8")
    print(
        f"\nFine-tuned in {minutes:.1f} min. Test set ({metrics.get('num_examples', '?')} reviews "
        "not seen in training):\n"
    )
    print(report)
    clf = load(run_dir / "best")
    examples = [
        "One of the best films I have seen this year: moving, funny and beautifully shot.",
        "A tedious, badly acted mess. I wanted my two hours back.",
        "The plot was thin, but the performances made it worth watching.",
    ]
    print("A few predictions:")
    for text, pred in zip(examples, clf.predict(examples)):
        print(f"  {pred['label']:>4} ({pred['confidence']:.2f})  {text}")
    print(f"\nThe model is in {run_dir / 'best'} (Hugging Face layout). Use it with:")
    print(f'  torchformer predict {run_dir} "What a great movie"')
    print(
        f"  python -c \"import torchformer; print(torchformer.load('{run_dir}').predict(['What a great movie']))\""
    )
    if (run_dir / "report.html").is_file():
        print(f"Report: {run_dir / 'report.html'}")
