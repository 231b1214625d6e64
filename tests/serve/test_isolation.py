"""One client's bad text fails only that client's request, and no error quotes another request.

Requests are merged into one micro-batch by a long batching window (``max_wait_ms``), so a
bad text really shares a model call with good ones unless it is stopped before it.
"""

import asyncio
import json
import re

import httpx
import pytest

from torchformer.serve.app import ServeLimits, create_app
from torchformer.serve.batching import MicroBatcher

# Everything sent within 300 ms joins one model call of up to 256 texts.
MERGING = ServeLimits(max_texts=8, max_chars=200, max_batch_size=256, max_wait_ms=300)
SURROGATE = b'{"texts": ["\\ud800"]}'  # a lone surrogate: valid JSON, not valid Unicode


class Recording:
    """The tiny classifier, recording each model call; ``hide_clean`` hides its ``clean``
    so that bad texts are only found inside the merged model call."""

    def __init__(self, classifier, *, hide_clean=False):
        self.classifier, self.hide_clean, self.batches = classifier, hide_clean, []
        self.labels = classifier.labels

    def __getattr__(self, name):
        if name == "clean" and self.hide_clean:
            raise AttributeError(name)
        return getattr(self.classifier, name)

    def predict(self, texts, *, batch_size=32):
        self.batches.append(list(texts))
        return self.classifier.predict(texts, batch_size=batch_size)


async def _send(app, requests, *, clients=1):
    """POST each (body kwargs) to /predict, all at once, spread over ``clients`` clients."""
    transport = httpx.ASGITransport(app=app)
    pool = [httpx.AsyncClient(transport=transport, base_url="http://test") for _ in range(clients)]
    try:
        return await asyncio.gather(
            *(pool[i % clients].post("/predict", **kw) for i, kw in enumerate(requests))
        )
    finally:
        for c in pool:
            await c.aclose()


def _assert_same_predictions(got, expected):
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    for g, e in zip(got, expected):
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)


def _indices(message):
    return re.findall(r"texts\[(\d+)\]", message)


def test_bad_texts_fail_only_their_own_requests(tiny_classifier):
    predictor = Recording(tiny_classifier)
    good = [[f"a wonderful film number {i}"] for i in range(20)]
    bad = [{"content": SURROGATE}] * 3 + [{"json": {"texts": ["fine", "<br /><br />"]}}] * 2
    answers = asyncio.run(
        _send(create_app(predictor, limits=MERGING), [{"json": {"texts": t}} for t in good] + bad)
    )
    for texts, response in zip(good, answers):
        assert response.status_code == 200, response.text
        _assert_same_predictions(response.json()["predictions"], tiny_classifier.predict(texts))
    for response, index in zip(answers[20:], ["0"] * 3 + ["1"] * 2):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and _indices(error["message"]) == [index]
    assert max(len(b) for b in predictor.batches) >= 10  # the good requests did share a batch


def test_a_failing_merged_batch_is_retried_request_by_request():
    calls = []

    def predict(texts):
        calls.append(list(texts))
        for i, t in enumerate(texts):
            if t.startswith("BAD"):
                raise ValueError(f"texts[{i}] is bad: {t!r}")
        return [t.upper() for t in texts]

    async def scenario():
        batcher = MicroBatcher(predict, max_batch_size=16, max_wait_ms=100, max_queue=16)
        answers = await asyncio.gather(
            batcher.submit(["a"]),
            batcher.submit(["b", "BAD b"]),
            batcher.submit(["c", "d"]),
            return_exceptions=True,
        )
        await batcher.close()
        return answers

    first, second, third = asyncio.run(scenario())
    assert first == ["A"] and third == ["C", "D"]
    assert isinstance(second, ValueError) and str(second) == "texts[1] is bad: 'BAD b'"
    assert calls[0] == ["a", "b", "BAD b", "c", "d"]  # merged first, then each request alone
    assert sorted(calls[1:]) == [["a"], ["b", "BAD b"], ["c", "d"]]


def test_errors_never_quote_another_request(tiny_classifier):
    # Without `clean`, the empty-after-cleaning text is only found by predict() on the merged
    # batch, whose error quotes the bad text and gives its index in that batch.
    predictor = Recording(tiny_classifier, hide_clean=True)
    alice = {"texts": ["alice writes a private review"]}
    mallory = {"texts": ['<img alt="mallory">']}
    answers = asyncio.run(
        _send(create_app(predictor, limits=MERGING), [{"json": alice}, {"json": mallory}])
    )
    # They did share a batch (sorted by length: the empty-after-cleaning text first).
    assert sorted(predictor.batches[0]) == sorted(alice["texts"] + mallory["texts"])
    assert "mallory" not in answers[0].text and "alice" not in answers[1].text
    assert answers[0].status_code == 200 and answers[1].status_code == 422
    assert _indices(answers[1].json()["error"]["message"]) == ["0"]


@pytest.mark.parametrize("hide_clean", [False, True], ids=["checked-alone", "found-in-batch"])
def test_mixed_burst_from_8_clients(tiny_classifier, hide_clean):
    """40 valid requests and 5 poisoned ones from 8 concurrent clients, merged into one batch."""
    predictor = Recording(tiny_classifier, hide_clean=hide_clean)
    requests, expected = [], []  # (kwargs), ("ok", texts) or ("bad", own index)
    for n in range(45):
        texts = [f"client{n % 8} request{n} was a great film", f"request{n} so dull"][: 1 + n % 2]
        if n % 9 == 4:  # 5 poisoned requests, the bad text at index 0 or 1
            poison = f'<img alt="request{n}">' if n % 2 else f"request{n} \ud800"
            texts = [*texts[: n % 2], poison]
            # json.dumps escapes the lone surrogate as \ud800 (httpx's json= cannot encode it)
            requests.append({"content": json.dumps({"texts": texts}).encode()})
            expected.append(("bad", str(len(texts) - 1)))
        else:
            requests.append({"json": {"texts": texts}})
            expected.append(("ok", texts))
    answers = asyncio.run(_send(create_app(predictor, limits=MERGING), requests, clients=8))

    for n, ((kind, want), response) in enumerate(zip(expected, answers)):
        others = re.findall(r"request(\d+)\b", response.text)
        assert set(others) <= {str(n)}, f"request {n} got text of requests {set(others)}"
        if kind == "ok":
            assert response.status_code == 200, response.text
            _assert_same_predictions(response.json()["predictions"], tiny_classifier.predict(want))
        else:
            assert response.status_code == 422, response.text
            assert _indices(response.json()["error"]["message"]) == [want]
    assert max(len(b) for b in predictor.batches) >= 20  # merged batches, not 45 small ones
