"""The HTTP app: every limit and error, micro-batching, metrics, and both backends."""

import asyncio
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from server_helpers import error_message

from torchformer.cli import main
from torchformer.cli.serve import is_loopback
from torchformer.serve.app import ServeLimits, create_app, load_predictor
from torchformer.serve.batching import MicroBatcher, QueueFullError

KEY = {"X-API-Key": "s3cret"}


class Recorder:
    """A fake predictor that records each batch and can be made slow or failing."""

    labels = ("neg", "pos")

    def __init__(self, delay=0.0, fail_on=None):
        self.batches, self.delay, self.fail_on = [], delay, fail_on
        self.release = threading.Event()
        self.release.set()

    def predict(self, texts, *, batch_size=32):
        self.release.wait(10)
        time.sleep(self.delay)
        self.batches.append(list(texts))
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("model exploded")
        return [{"label": "pos", "confidence": 1.0, "probabilities": {"neg": 0.0, "pos": 1.0}, "text": t}
                for t in texts]  # fmt: skip


@pytest.fixture()
def client(tiny_classifier):
    limits = ServeLimits(max_texts=4, max_chars=100)
    with TestClient(create_app(tiny_classifier, limits=limits, api_key="s3cret")) as c:
        yield c


def test_predict_matches_predict_api(client, tiny_classifier):
    texts = ["a wonderful film", "boring and awful"]
    response = client.post("/predict", json={"texts": texts}, headers=KEY)
    assert response.status_code == 200
    got, expected = response.json()["predictions"], tiny_classifier.predict(texts)
    assert [p["label"] for p in got] == [p["label"] for p in expected] == ["pos", "neg"]
    for a, b in zip(got, expected):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-6)
        assert a["probabilities"].keys() == b["probabilities"].keys()


def test_api_key_is_required_when_configured(client):
    assert "missing" in error_message(
        client.post("/predict", json={"texts": ["x"]}), 401, "unauthorized"
    )
    bad = {"X-API-Key": "nope"}
    assert "wrong" in error_message(
        client.post("/predict", json={"texts": ["x"]}, headers=bad), 401, "unauthorized"
    )
    error_message(client.get("/metrics"), 401, "unauthorized")
    assert client.get("/metrics", headers=KEY).status_code == 200
    assert client.get("/health").status_code == 200  # health stays open for probes


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b'{"texts": ["a"', "invalid_json", "not valid JSON"),
        (b"\xff\xfe\x00", "invalid_json", "not valid JSON"),
        (b"", "invalid_json", "not valid JSON"),
        (b'["a"]', "invalid_request", "JSON object"),
        (b'{"text": ["a"]}', "invalid_request", "JSON object"),
        (b'{"texts": "a"}', "invalid_request", "list of strings, got str"),
        (b'{"texts": null}', "invalid_request", "got NoneType"),
        (b'{"texts": []}', "invalid_request", "empty"),
        (b'{"texts": ["ok", 3]}', "invalid_request", "texts[1] is int"),
        (b'{"texts": ["ok", {"a": 1}]}', "invalid_request", "texts[1] is dict"),
        (b'{"texts": ["ok", "   "]}', "invalid_request", "texts[1] is empty"),
        (b'{"texts": ["ok"], "top_k": 2}', "invalid_request", "unknown field"),
    ],
)
def test_malformed_requests_get_422(client, body, code, needle):
    assert needle in error_message(client.post("/predict", content=body, headers=KEY), 422, code)


def test_limits_answer_413(client):
    msg = error_message(
        client.post("/predict", json={"texts": ["a"] * 5}, headers=KEY), 413, "too_many_texts"
    )
    assert "5 texts; at most 4" in msg
    msg = error_message(
        client.post("/predict", json={"texts": ["ok", "x" * 101]}, headers=KEY),
        413,
        "text_too_long",
    )
    assert "texts[1] has 101 characters; at most 100" in msg
    assert (
        client.post("/predict", json={"texts": ["x" * 100]}, headers=KEY).status_code == 200
    )  # at the limit
    huge = (
        b'{"texts": ["'
        + b"y" * (ServeLimits(max_texts=4, max_chars=100).max_body_bytes + 1)
        + b'"]}'
    )
    error_message(client.post("/predict", content=huge, headers=KEY), 413, "body_too_large")


def test_unknown_routes_and_methods_are_json_errors(client):
    error_message(client.get("/nope"), 404, "not_found")
    error_message(client.get("/predict"), 405, "method_not_allowed")


def test_health_and_metrics_count_everything(client):
    client.post("/predict", json={"texts": ["good", "bad"]}, headers=KEY)
    client.post("/predict", content=b"{", headers=KEY)
    client.post("/predict", json={"texts": ["a"] * 9}, headers=KEY)
    client.post("/predict", json={"texts": ["a"]})
    health = client.get("/health").json()
    assert (
        health["status"] == "ok"
        and health["backend"] == "pytorch"
        and health["labels"] == ["neg", "pos"]
    )
    m = client.get("/metrics", headers=KEY).json()
    assert m["requests_by_endpoint"]["/predict"] == {"200": 1, "401": 1, "413": 1, "422": 1}
    assert m["requests_by_status"]["200"] == 2  # /predict and /health
    assert (
        m["predict_latency_ms"]["count"] == 4 and m["predict_latency_ms"]["buckets"]["le_inf"] == 4
    )
    assert m["batch_size"]["count"] == 1 and m["batch_size"]["buckets"]["le_1"] == 0
    assert m["batch_size"]["buckets"]["le_2"] == 1 and m["texts_predicted_total"] == 2
    assert m["queue_depth"] == 0 and m["queue_limit"] == 256


def test_a_failing_model_gives_500_and_the_server_keeps_serving():
    fake = Recorder(fail_on="boom")
    with TestClient(create_app(fake)) as c:
        assert "model exploded" in error_message(
            c.post("/predict", json={"texts": ["boom"]}), 500, "prediction_failed"
        )
        assert c.post("/predict", json={"texts": ["fine"]}).status_code == 200
        assert c.get("/health").json()["status"] == "ok"


async def _post_all(app, bodies):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*(c.post("/predict", json=b) for b in bodies))


def test_concurrent_requests_are_micro_batched():
    fake = Recorder(delay=0.05)
    app = create_app(fake, limits=ServeLimits(max_batch_size=4, max_wait_ms=50))
    responses = asyncio.run(_post_all(app, [{"texts": [f"t{i}"]} for i in range(10)]))
    assert all(r.status_code == 200 for r in responses)
    # Each response carries its own texts back, in order.
    assert [r.json()["predictions"][0]["text"] for r in responses] == [f"t{i}" for i in range(10)]
    assert len(fake.batches) < 10 and max(len(b) for b in fake.batches) <= 4
    assert sorted(t for b in fake.batches for t in b) == sorted(f"t{i}" for i in range(10))


def test_full_queue_answers_503():
    fake = Recorder()
    fake.release.clear()  # the model is stuck: nothing leaves the queue
    app = create_app(fake, limits=ServeLimits(max_queue=3, max_batch_size=2, max_wait_ms=0))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            running = asyncio.create_task(c.post("/predict", json={"texts": ["a", "b"]}))
            await asyncio.sleep(0.2)  # taken by the worker: queue empty again
            queued = asyncio.create_task(c.post("/predict", json={"texts": ["c", "d", "e"]}))
            await asyncio.sleep(0.1)  # 3 texts waiting: the queue is full
            rejected = await c.post("/predict", json={"texts": ["f"]})
            fake.release.set()
            return rejected, await running, await queued

    rejected, running, queued = asyncio.run(scenario())
    assert "queue full" in error_message(rejected, 503, "queue_full")
    assert rejected.headers["retry-after"] == "1"
    assert running.status_code == 200 and queued.status_code == 200


def test_batcher_keeps_big_requests_whole_and_propagates_errors():
    calls = []

    def predict(texts):
        calls.append(len(texts))
        if "bad" in texts:
            raise ValueError("bad text")
        return [t.upper() for t in texts]

    async def scenario():
        batcher = MicroBatcher(predict, max_batch_size=2, max_wait_ms=20, max_queue=10)
        big, small = await asyncio.gather(batcher.submit(["a", "b", "c"]), batcher.submit(["d"]))
        with pytest.raises(ValueError, match="bad text"):
            await batcher.submit(["bad"])
        with pytest.raises(QueueFullError):
            await batcher.submit(["x"] * 11)
        await batcher.close()
        return big, small

    big, small = asyncio.run(scenario())
    assert big == ["A", "B", "C"] and small == ["D"]
    assert calls[:2] == [3, 1]  # the 3-text request ran alone (larger than a batch), never split


def test_onnx_export_dirs_are_served_with_onnxruntime(tiny_export_dir, tiny_classifier):
    predictor = load_predictor(tiny_export_dir)
    assert predictor.backend == "onnxruntime"
    with TestClient(create_app(predictor)) as c:
        assert c.get("/health").json()["backend"] == "onnxruntime"
        got = c.post("/predict", json={"texts": ["a superb film", "dreadful"]}).json()[
            "predictions"
        ]
    assert [p["label"] for p in got] == [
        p["label"] for p in tiny_classifier.predict(["a superb film", "dreadful"])
    ]
    with pytest.raises(ValueError, match="int8 serving needs an export directory"):
        load_predictor(tiny_export_dir.parent / "nowhere", precision="int8")


def test_serve_cli_refuses_an_unset_api_key_env(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.delenv("TF_TEST_KEY", raising=False)
    assert main(["serve", str(tiny_model_dir), "--api-key-env", "TF_TEST_KEY"]) == 2
    assert "TF_TEST_KEY" in capsys.readouterr().err


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert (
        not is_loopback("0.0.0.0")
        and not is_loopback("192.168.1.4")
        and not is_loopback("example.com")
    )
