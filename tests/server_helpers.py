"""Helpers the HTTP-server tests share (tests/serve, tests/bench): a fake classifier, the
error-body check, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn


class FakeClassifier:
    """Answers "pos" for every text, fails on the text "boom", and while ``release`` is clear
    holds every call back (to fill queues and test shutdown)."""

    labels = ("neg", "pos")

    def __init__(self):
        self.release = threading.Event()
        self.release.set()

    def predict(self, texts, *, batch_size=32):
        self.release.wait(10)
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return [{"label": "pos", "confidence": 1.0, "probabilities": {"neg": 0.0, "pos": 1.0}}
                for _ in texts]  # fmt: skip


def error_message(response, status, code):
    """The message of an error answer, after checking its status and the error body's shape."""
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["status"] == status and body["code"] == code and body["message"]
    return body["message"]


@dataclass
class Served:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread


@contextlib.contextmanager
def serving(app, config: uvicorn.Config | None = None):
    """``app`` under uvicorn in a background thread, on 127.0.0.1 and a port the OS picks.
    ``config`` (built for ``app``) replaces the default ``uvicorn.Config``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config or uvicorn.Config(app, log_level="error", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    port = sock.getsockname()[1]
    try:
        yield Served(f"http://127.0.0.1:{port}", port, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
