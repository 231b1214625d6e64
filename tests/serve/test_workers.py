"""``torchformer serve --workers N``: the app factory each uvicorn worker runs, from the
environment the parent sets; and, once, two real worker processes behind one port."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from torchformer.serve import workers
from torchformer.serve.app import ServeLimits
from torchformer.serve.server import ServerSettings
from torchformer.serve.workers import WorkerSettings, app_from_env, threads_per_worker


def _settings(path, **overrides):
    return WorkerSettings(
        path=str(path),
        threads=2,
        api_key_env="TF_WORKER_TEST_KEY",
        model_name=str(path),
        limits=ServeLimits(max_texts=2, max_batch_tokens=64),
        server=ServerSettings(header_timeout_s=2.5),
        **overrides,
    )


def test_settings_travel_through_the_environment(tiny_model_dir):
    settings = _settings(tiny_model_dir, allowed_hosts=["testserver"])
    back = WorkerSettings.from_env(settings.to_env())
    assert back == settings and asdict(back) == asdict(settings)
    assert isinstance(back.limits, ServeLimits) and back.limits.max_batch_tokens == 64
    with pytest.raises(KeyError, match=workers.ENV_VAR):
        WorkerSettings.from_env({})


def test_the_factory_builds_a_working_app_from_the_environment(
    tiny_model_dir, tiny_classifier, monkeypatch
):
    monkeypatch.setenv("TF_WORKER_TEST_KEY", "k3y")
    for name, value in _settings(tiny_model_dir).to_env().items():
        monkeypatch.setenv(name, value)
    key = {"X-API-Key": "k3y"}
    texts = ["a wonderful film", "boring and awful"]
    with TestClient(app_from_env()) as client:
        assert torch.get_num_threads() == 2  # the worker's own thread count
        answer = client.post("/predict", json={"texts": texts}, headers=key)
        assert answer.status_code == 200, answer.text
        got = answer.json()["predictions"]
        # The settings came along: the key, the text limit and the model's name.
        assert client.post("/predict", json={"texts": texts}).status_code == 401
        assert client.post("/predict", json={"texts": texts * 2}, headers=key).status_code == 413
        health = client.get("/health").json()
    assert health["model"] == tiny_model_dir.name and health["limits"]["max_batch_tokens"] == 64
    for g, e in zip(got, tiny_classifier.predict(texts)):
        assert g["label"] == e["label"]
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)
    # The protocol class a worker imports by name carries the settings' header deadline.
    assert workers.HeaderTimeoutProtocol is workers._protocol(2.5)


def test_a_worker_that_cannot_load_its_model_stops_uvicorn(tmp_path, monkeypatch):
    from uvicorn.config import STARTUP_FAILURE

    monkeypatch.setenv("TF_WORKER_TEST_KEY", "k3y")
    for name, value in _settings(tmp_path / "missing").to_env().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        app_from_env()
    assert stopped.value.code == STARTUP_FAILURE  # not restarted for ever by the parent


def test_threads_per_worker_splits_the_cores(monkeypatch):
    monkeypatch.setattr(workers, "available_cores", lambda: 16)
    assert threads_per_worker(1) is None  # one worker: the runtime's default, as before
    assert threads_per_worker(4) == 4 and threads_per_worker(3) == 5
    assert threads_per_worker(32) == 1  # at least one each
    assert threads_per_worker(4, threads=7) == 7  # --threads wins


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workers(pid: int) -> set[int]:
    """The worker processes uvicorn spawned under ``pid`` (not multiprocessing's tracker)."""
    path = f"/proc/{pid}/task/{pid}/children"
    if not os.path.exists(path):
        pytest.skip("needs Linux /proc to see the worker processes")
    with open(path) as f:
        children = f.read().split()
    found = set()
    for child in children:
        with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                found.add(int(child))
    return found


def test_two_worker_processes_answer_on_one_port(tiny_model_dir, tiny_classifier):
    port = _free_port()
    command = [sys.executable, "-m", "torchformer", "serve", str(tiny_model_dir)]
    command += ["--port", str(port), "--workers", "2", "--threads", "1", "--max-wait-ms", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while True:  # up once both workers answer /health (each on a fresh connection)
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "workers did not start"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    pids = _workers(server.pid)
                    if len(pids) == 2:
                        break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        texts = ["a superb film", "dreadful and dull"]
        expected = [p["label"] for p in tiny_classifier.predict(texts)]
        for _ in range(6):  # fresh connections: the kernel hands them to either worker
            got = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=30)
            assert [p["label"] for p in got.json()["predictions"]] == expected
        assert _workers(server.pid) == pids  # both still alive: none crashed and restarted
    finally:
        server.terminate()
        server.wait(timeout=30)
