"""The server load bench: an open-loop schedule, its report, errors counted; against a real
uvicorn server on a free loopback port (in a thread; ``--server``: a subprocess)."""

import json
import socket
import threading

import pytest
from server_helpers import FakeClassifier, serving

from torchformer.bench.serve_load import main, run_load
from torchformer.serve.app import ServeLimits, create_app

KEYS = {
    "url", "rate", "duration_s", "texts_per_request", "concurrency_limit", "requests", "ok",
    "errors", "errors_by_kind", "wall_s", "throughput_requests_per_s", "throughput_texts_per_s",
    "latency_ms", "late_starts", "max_start_lag_ms", "waited_for_connection",
}  # fmt: skip


def _check_report(report, *, requests):
    assert set(report) == KEYS
    assert report["requests"] == requests == report["ok"] + report["errors"]
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report["late_starts"] >= 0 and report["max_start_lag_ms"] >= 0


def test_a_tiny_model_under_load_gets_a_full_report(tiny_classifier):
    texts = ["a wonderful film", "boring and awful", "the plot was quite dull", "superb"]
    with serving(create_app(tiny_classifier)) as served:
        report = run_load(served.url, texts, rate=20, duration_s=1.0, texts_per_request=2)
    _check_report(report, requests=20)
    assert report["ok"] == 20 and report["errors"] == 0 and report["errors_by_kind"] == {}
    # The schedule spans the duration (request 19 starts at 0.95 s), and each answer adds 2 texts.
    assert report["wall_s"] >= 0.95
    assert report["throughput_texts_per_s"] == pytest.approx(
        2 * report["throughput_requests_per_s"], rel=1e-2
    )
    assert report["throughput_requests_per_s"] == pytest.approx(20 / report["wall_s"], rel=1e-2)


def test_the_load_is_open_loop_and_latency_counts_from_the_schedule():
    fake = FakeClassifier()
    fake.release.clear()  # the model answers nothing until 1.0 s after the start
    with serving(create_app(fake, limits=ServeLimits(max_wait_ms=1))) as served:
        timer = threading.Timer(1.0, fake.release.set)
        timer.start()
        report = run_load(served.url, ["fine"], rate=20, duration_s=0.5)
        timer.join()
    _check_report(report, requests=10)
    assert report["ok"] == 10
    # All 10 were sent by 0.45 s without waiting for an answer, and none could be answered
    # before 1.0 s: counted from its scheduled start, even the last waited >= 0.55 s.
    assert report["latency_ms"]["p50"] >= 550 and report["wall_s"] >= 0.9


def test_error_answers_and_unreachable_servers_are_counted_as_errors():
    with serving(create_app(FakeClassifier())) as served:
        report = run_load(served.url, ["fine", "boom"], rate=20, duration_s=0.5)
    _check_report(report, requests=10)
    assert report["ok"] == 5 and report["errors"] == 5 and report["errors_by_kind"] == {"500": 5}

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    with closed:
        port = closed.getsockname()[1]
        report = run_load(f"http://127.0.0.1:{port}", ["fine"], rate=20, duration_s=0.2)
    assert report["requests"] == 4 and report["ok"] == 0
    assert report["errors_by_kind"] == {"ConnectError": 4}
    assert report["latency_ms"]["p50"] is None and report["throughput_requests_per_s"] == 0


def test_run_load_refuses_a_bad_schedule():
    with pytest.raises(ValueError, match="rate"):
        run_load("http://127.0.0.1:9", ["a"], rate=0, duration_s=1)
    with pytest.raises(ValueError, match="no texts"):
        run_load("http://127.0.0.1:9", [], rate=1, duration_s=1)


def _texts_file(tmp_path):
    path = tmp_path / "texts.jsonl"
    lines = [json.dumps({"text": t}) for t in ("a superb film", "dreadful", "quite good")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_command_writes_its_report(tmp_path, capsys):
    out = tmp_path / "load.json"
    with serving(create_app(FakeClassifier())) as served:
        argv = [served.url, "--rate", "10", "--duration", "0.5", "--texts-per-request", "3"]
        argv += ["--texts-file", str(_texts_file(tmp_path)), "--out", str(out), "--warmup", "1"]
        assert main(argv) == 0
    report = json.loads(out.read_text())
    _check_report({k: v for k, v in report.items() if k not in ("texts", "served")}, requests=5)
    assert report["served"]["backend"] == "pytorch" and report["served"]["weights_dtype"] is None
    assert report["ok"] == 5 and report["texts"]["n"] == 3
    assert "texts/s" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # neither a URL nor --server
        main(["--rate", "1", "--duration", "1"])


def test_server_option_starts_and_stops_a_real_server(tmp_path, tiny_model_dir):
    out = tmp_path / "load.json"
    argv = ["--server", str(tiny_model_dir), "--rate", "10", "--duration", "0.5", "--warmup", "1"]
    argv += ["--threads", "1", "--texts-file", str(_texts_file(tmp_path)), "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["ok"] == 5 and report["server"] == {
        "run": str(tiny_model_dir),
        "workers": 1,
        "threads": 1,
    }
    assert report["served"]["weights_dtype"] == "float32"  # no bf16 gate in this run
    with socket.socket() as probe:  # stopped: its port refuses connections again
        assert probe.connect_ex(("127.0.0.1", int(report["url"].rsplit(":", 1)[1]))) != 0
