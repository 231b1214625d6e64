"""The run report and the ``report`` / ``explain`` commands, without a browser."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from viz_pages import embedded_json

from torchformer.cli import main
from torchformer.viz.attention import attention_for_text
from torchformer.viz.report import read_evaluation, write_report

SECTIONS = ("summary", "training", "evaluation", "errors", "attention", "config", "manifest")


@pytest.fixture(scope="module")
def report(tiny_run) -> str:
    path = write_report(tiny_run, n_examples=4)
    assert path == tiny_run / "report.html"
    return path.read_text(encoding="utf-8")


def test_read_evaluation_reads_what_write_evaluation_wrote(tiny_run):
    e = read_evaluation(tiny_run / "eval" / "test")
    metrics = json.loads((tiny_run / "eval" / "test" / "metrics.json").read_text())
    assert e.labels == ["neg", "pos"]
    assert e.confusion == metrics["confusion_matrix"]
    assert (
        sum(map(sum, e.confusion)) == metrics["num_examples"] == len(e.confidence) == len(e.lengths)
    )
    assert sum(e.is_correct) == e.confusion[0][0] + e.confusion[1][1]
    assert len(e.errors) == min(20, metrics["num_examples"] - sum(e.is_correct))
    assert e.errors[0]["predicted"] != e.errors[0]["true"] and e.correct


def test_report_has_every_section_and_plot(report, tiny_run):
    for section in SECTIONS:
        assert f"<section id='{section}'>" in report
    for cls in ("tf-curves", "tf-confusion", "tf-calibration", "tf-length", "tf-grid"):
        assert f"tf-plot {cls}" in report, cls
    metrics = json.loads((tiny_run / "eval" / "test" / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.4f}" in report
    assert "macro avg" in report  # the classification report
    assert "preset: tiny" in report  # config.yaml
    assert "f" * 64 in report  # manifest data fingerprint
    # Error table: one row per stored error, most confident first.
    errors = [
        json.loads(line) for line in (tiny_run / "eval/test/errors.jsonl").read_text().splitlines()
    ]
    table = report.split("<section id='errors'>")[1].split("</section>")[0]
    assert table.count("<tr>") == len(errors) + 1
    assert f"{errors[0]['confidence']:.4f}" in table
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", report)  # self-contained


def test_report_attention_examples_are_wrong_and_correct(report, tiny_run, tiny_classifier):
    clf, _ = tiny_classifier
    section = report.split("<section id='attention'>")[1].split("</section>")[0]
    assert section.count("tf-wrong-example") == 2 and section.count("tf-ok-example") == 2
    payloads = embedded_json(report)
    assert sorted(payloads) == [f"tf-data-ex{i}" for i in range(4)]
    # The first view is the most confidently wrong example, with its real weights.
    top_error = json.loads((tiny_run / "eval/test/errors.jsonl").read_text().splitlines()[0])
    att = attention_for_text(clf, top_error["text"])
    shown = torch.tensor(payloads["tf-data-ex0"]["pages"][0]["attn"], dtype=torch.float64)
    # The page rounds weights to 4 decimals (error <= 0.5e-4); two float32 forward passes
    # of the same text may differ by ~1e-8 more (seen: 5.0015e-05 on a fresh clone).
    assert (shown - att.attentions.double()).abs().max() <= 0.5e-4 + 1e-6


def test_report_of_an_incomplete_run_says_what_is_missing(tiny_run, tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    shutil.copy(tiny_run / "metrics.jsonl", run / "metrics.jsonl")
    html = write_report(run).read_text()
    assert "tf-curves" in html
    assert (
        "No eval/ directory." in html and "No manifest.json." in html and "No config.yaml." in html
    )


def test_report_names_a_malformed_file(tiny_run, tmp_path):
    run = tmp_path / "bad"
    shutil.copytree(tiny_run / "eval", run / "eval")
    (run / "eval/test/metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metrics\.json: not valid JSON"):
        write_report(run)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nowhere")


def test_translation_metrics_get_a_bleu_plot(tmp_path):
    run = tmp_path / "mt"
    run.mkdir()
    lines = [
        {"step": e * 10, "epoch": e, "split": "val", "loss": 3.0 / e, "bleu": 5.0 * e}
        for e in range(1, 4)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert "tf-plot tf-bleu" in write_report(run).read_text()


def test_cli_report_and_explain(tiny_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(tiny_run), "--examples", "0", "--out", str(out)]) == 0
    assert "Attention views switched off" in out.read_text()
    page = tmp_path / "e.html"
    assert main(["explain", str(tiny_run), "a wonderful film", "--out", str(page)]) == 0
    assert "explain page written to" in capsys.readouterr().out
    (payload,) = embedded_json(page.read_text()).values()
    assert payload["tokens"][0] == "[CLS]" and payload["n_layers"] == 2 and payload["n_heads"] == 4
    text_file = tmp_path / "t.txt"
    text_file.write_text("an awful, boring film")
    assert (
        main(["explain", str(tiny_run / "best"), "--file", str(text_file), "--out", str(page)]) == 0
    )
    assert "awful" in page.read_text()
    assert main(["explain", str(tiny_run), "--out", str(page)]) == 2  # no text given


def test_errors_with_unicode_line_separators_inside_texts(tmp_path):
    """IMDB reviews hold U+0085 / U+2028, which JSON writes raw; they are not line breaks."""
    record = {
        "true": "pos",
        "predicted": "neg",
        "confidence": 0.9,
        "text": "omnibus\u0085an\u2028anthology",
    }
    (tmp_path / "errors.jsonl").write_text(
        json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    assert read_evaluation(tmp_path).errors == [record]


def test_per_example_arrays_and_correct_examples_inside_metrics_json(tmp_path):
    metrics = {
        "accuracy": 0.5,
        "examples": {"confidence": [0.9, 0.6], "correct": [True, False], "length": [12, 40]},
        "correct": [{"true": "pos", "predicted": "pos", "confidence": 0.9, "text": "great"}],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    e = read_evaluation(tmp_path)
    assert (e.confidence, e.is_correct, e.lengths) == ([0.9, 0.6], [True, False], [12, 40])
    assert e.correct[0]["text"] == "great"
