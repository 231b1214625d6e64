"""``POST /generate``: whole and streamed answers, every limit and error, one model at a time."""

import asyncio
import json
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from server_helpers import error_message

from torchformer.serve.app import ServeLimits, create_app

KEY = {"X-API-Key": "s3cret"}


class FakeLM:
    """A language model that continues with "a", "b", "c", ... and can fail or block."""

    def __init__(self):
        self.calls, self.release = [], threading.Event()
        self.release.set()

    def stream(self, prompt, *, greedy=False, stop=(), **options):
        if "\x00" in prompt:
            raise ValueError(
                "cannot tokenize the prompt: characters not in the vocabulary ['\\x00']"
            )
        self.calls.append({"prompt": prompt, "greedy": greedy, "stop": list(stop), **options})

        def pieces():
            self.release.wait(10)
            for i in range(options["max_new_tokens"]):
                if prompt == "explode" and i == 2:
                    raise RuntimeError("model exploded")
                yield "abcdefghijklmnopqrstuvwxyz"[i % 26]

        return pieces()


@pytest.fixture()
def fake():
    return FakeLM()


@pytest.fixture()
def client(fake):
    limits = ServeLimits(max_chars=50, max_new_tokens=20)
    with TestClient(create_app(fake, limits=limits, api_key="s3cret")) as c:
        yield c


def events(response) -> list[tuple[str | None, dict]]:
    out, event = [], None
    for line in response.text.splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
            event = None
    return out


def test_whole_answer_and_options_reach_the_model(client, fake):
    r = client.post(
        "/generate",
        headers=KEY,
        json={
            "prompt": "Once",
            "max_new_tokens": 4,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["\n"],
            "seed": 3,
            "no_repeat_ngram_size": 2,
        },
    )
    assert r.status_code == 200
    assert r.json() == {"text": "Onceabcd", "completion": "abcd"}
    assert fake.calls[-1] == {
        "prompt": "Once",
        "greedy": False,
        "stop": ["\n"],
        "max_new_tokens": 4,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "no_repeat_ngram_size": 2,
    }


def test_streamed_answer_is_server_sent_events(client):
    r = client.post(
        "/generate", headers=KEY, json={"prompt": "x", "max_new_tokens": 3, "stream": True}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert events(r) == [
        (None, {"text": "a"}),
        (None, {"text": "b"}),
        (None, {"text": "c"}),
        (None, {"done": True, "completion": "abc"}),
    ]


def test_a_failure_mid_stream_is_an_error_event_and_the_server_keeps_serving(client):
    r = client.post(
        "/generate", headers=KEY, json={"prompt": "explode", "max_new_tokens": 5, "stream": True}
    )
    got = events(r)
    assert got[:2] == [(None, {"text": "a"}), (None, {"text": "b"})]
    assert got[-1][0] == "error" and got[-1][1]["error"]["code"] == "generation_failed"
    whole = client.post("/generate", headers=KEY, json={"prompt": "explode", "max_new_tokens": 5})
    assert "model exploded" in error_message(whole, 500, "generation_failed")
    assert (
        client.post(
            "/generate", headers=KEY, json={"prompt": "ok", "max_new_tokens": 1}
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        ({"text": "x"}, 422, "invalid_request", "prompt"),
        ({"prompt": "x", "temprature": 1}, 422, "invalid_request", "temprature"),
        ({"prompt": 3}, 422, "invalid_request", "'prompt' must be a string"),
        ({"prompt": "x", "max_new_tokens": True}, 422, "invalid_request", "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 0}, 422, "invalid_request", ">= 1"),
        ({"prompt": "x", "top_p": 1.5}, 422, "invalid_request", "top_p"),
        ({"prompt": "x", "stop": [""]}, 422, "invalid_request", "non-empty"),
        ({"prompt": "x", "stop": ["y" * 101]}, 422, "invalid_request", "at most 100 characters"),
        ({"prompt": "x", "seed": 2**64}, 422, "invalid_request", "'seed'"),
        ({"prompt": "x", "num_beams": 2, "stream": True}, 422, "invalid_request", "cannot stream"),
        ({"prompt": "bad\x00"}, 422, "invalid_request", "vocabulary"),
        ({"prompt": "x" * 51}, 413, "text_too_long", "at most 50"),
        ({"prompt": "x", "max_new_tokens": 21}, 413, "too_many_tokens", "at most 20"),
    ],
)
def test_bad_requests_get_the_predict_error_shapes(client, body, status, code, needle):
    assert needle in error_message(client.post("/generate", headers=KEY, json=body), status, code)


def test_key_json_and_routes(client):
    error_message(client.post("/generate", json={"prompt": "x"}), 401, "unauthorized")
    error_message(client.post("/generate", headers=KEY, content=b"{oops"), 422, "invalid_json")
    assert "/generate" in error_message(
        client.post("/predict", headers=KEY, json={"texts": ["x"]}), 404, "not_found"
    )
    health = client.get("/health").json()
    assert health["endpoint"] == "/generate" and health["labels"] is None


def test_one_generation_at_a_time_and_a_full_wait_queue_answers_503(fake):
    fake.release.clear()  # the model is stuck on the first request
    app = create_app(fake, limits=ServeLimits(max_generate_queue=1))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            body = {"prompt": "p", "max_new_tokens": 2}
            running = asyncio.create_task(c.post("/generate", json=body))
            await asyncio.sleep(0.2)
            waiting = asyncio.create_task(c.post("/generate", json=body))
            await asyncio.sleep(0.1)
            started_while_blocked = len(fake.calls)
            rejected = await c.post("/generate", json=body)
            fake.release.set()
            return started_while_blocked, rejected, await running, await waiting

    started, rejected, running, waiting = asyncio.run(scenario())
    assert started == 1  # the second request waited for the first instead of running beside it
    error_message(rejected, 503, "queue_full")
    assert rejected.headers["retry-after"] == "1"
    assert running.json()["completion"] == waiting.json()["completion"] == "ab"
