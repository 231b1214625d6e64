"""The server's edges: hostile JSON, slow and vanishing clients, shutdown, /health, hosts."""

import asyncio
import contextlib
import logging
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from server_helpers import FakeClassifier, error_message, serving

from torchformer.serve.app import ServeLimits, create_app

DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON nested far past Python's recursion limit


class FakeLM:
    def stream(self, prompt, **options):
        return iter(["x"])


@pytest.mark.parametrize(
    ("model", "route", "body"),
    [
        (FakeClassifier(), "/predict", DEEP),
        (FakeClassifier(), "/predict", b'{"texts": ' + DEEP + b"}"),
        (FakeLM(), "/generate", b'{"prompt": "hi", "stop": ' + DEEP + b"}"),
    ],
    ids=["predict", "predict-texts", "generate"],
)
def test_deeply_nested_json_is_a_counted_jsonerror_message(model, route, body):
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        assert "nested too deeply" in error_message(
            c.post(route, content=body), 422, "invalid_json"
        )
        assert c.get("/metrics").json()["requests_by_endpoint"][route] == {"422": 1}


def test_an_unexpected_error_is_a_counted_json_500(caplog):
    class Broken(FakeClassifier):
        @property
        def labels(self):
            raise RuntimeError("labels went missing")

    with TestClient(create_app(Broken()), raise_server_exceptions=False) as c:
        message = error_message(c.get("/health"), 500, "internal_error")
        assert "labels went missing" not in message  # internals stay in the log
        assert c.get("/metrics").json()["requests_by_endpoint"]["/health"] == {"500": 1}
    assert "labels went missing" in caplog.text


async def _call_app(app, messages, *, path="/predict"):
    """Call the ASGI ``app`` with ``messages`` as the request; then the client stalls for ever.
    Returns the status and body sent back."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("test", 80), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
    }  # fmt: skip
    pending, sent = list(messages), []

    async def receive():
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 5)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_slow_body_gets_408():
    app = create_app(FakeClassifier(), limits=ServeLimits(body_timeout_s=0.2))
    part = {"type": "http.request", "body": b'{"texts": ["a', "more_body": True}
    status, body = asyncio.run(_call_app(app, [part]))
    assert status == 408 and b'"code":"request_timeout"' in body


def test_a_client_leaving_mid_body_is_one_log_line(caplog):
    app = create_app(FakeClassifier())
    part = {"type": "http.request", "body": b'{"texts": ["a', "more_body": True}
    with caplog.at_level(logging.DEBUG, logger="torchformer"):
        asyncio.run(_call_app(app, [part, {"type": "http.disconnect"}]))  # does not raise
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(loud) == 1 and loud[0].exc_info is None and "disconnected" in loud[0].message
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG)
    with TestClient(app) as c:
        assert c.get("/metrics").json()["requests_by_endpoint"]["/predict"] == {"499": 1}


def test_health_shows_no_paths(tmp_path):
    model = FakeClassifier()
    model.path = tmp_path / "export" / "model.int8.onnx"  # as an ONNX predictor has
    with TestClient(create_app(model, model_name=str(tmp_path / "runs" / "imdb"))) as c:
        health = c.get("/health")
    assert str(tmp_path) not in health.text
    assert health.json()["model"] == "imdb" and health.json()["model_file"] == "model.int8.onnx"


def test_allowed_hosts_refuse_other_hosts_with_a_counted_jsonerror_message():
    app = create_app(FakeClassifier(), allowed_hosts=["api.example.com", "*.internal"])
    with TestClient(app, base_url="http://api.example.com") as c:
        refused = c.get("http://evil.example.net/health")
        assert "evil.example.net" in error_message(refused, 400, "invalid_host")
        assert c.post("/predict", json={"texts": ["a"]}).status_code == 200
        assert c.get("http://node1.internal/health").status_code == 200
        metrics = c.get("/metrics").json()["requests_by_endpoint"]
    assert metrics["/health"] == {"200": 1, "400": 1} and metrics["/predict"] == {"200": 1}


# --- the real server (uvicorn on 127.0.0.1) ------------------------------------------------
def _raw(port, data, wait=3.0):
    """Send ``data`` on a fresh connection; what the server answers until it closes, and
    how long that took."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        conn.sendall(data)
        start, answer = time.monotonic(), b""
        with contextlib.suppress(TimeoutError):
            while chunk := conn.recv(65536):
                answer += chunk
        return answer, time.monotonic() - start


def test_the_server_times_out_slow_headers_and_slow_bodies():
    from torchformer.serve.server import ServerSettings, uvicorn_config

    app = create_app(FakeClassifier(), limits=ServeLimits(body_timeout_s=0.3))
    settings = ServerSettings(header_timeout_s=0.3, max_header_bytes=4096)
    with serving(app, uvicorn_config(app, settings=settings, log_level="error")) as served:
        port = served.port
        answer, took = _raw(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
        assert answer == b"" and took < 2  # closed, not held open
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        answer, took = _raw(port, head + b'{"texts": ["')
        assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer and took < 2
        answer, _ = _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000)
        assert answer.startswith(b"HTTP/1.1 431") or answer.startswith(b"HTTP/1.1 400")
        answer, _ = _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")  # and a prompt client is still served


def _post_ignoring_errors(url, body):
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, timeout=15)


def test_shutdown_waits_for_requests_in_flight_at_most_its_deadline():
    from torchformer.serve.server import ServerSettings, uvicorn_config

    model = FakeClassifier()
    model.release.clear()  # the request in flight never finishes by itself
    stuck = threading.Thread(target=lambda: None)
    app = create_app(model, limits=ServeLimits(max_wait_ms=0))
    try:
        settings = ServerSettings(graceful_shutdown_s=1)
        with serving(app, uvicorn_config(app, settings=settings, log_level="error")) as served:
            server, thread, url = served.server, served.thread, f"{served.url}/predict"
            stuck = threading.Thread(target=_post_ignoring_errors, args=(url, {"texts": ["a"]}))
            stuck.start()
            time.sleep(0.3)
            start = time.monotonic()
            server.should_exit = True
            thread.join(timeout=8)
            assert not thread.is_alive() and time.monotonic() - start < 4
    finally:
        model.release.set()
        stuck.join(timeout=10)
