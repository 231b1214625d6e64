"""Length-grouped micro-batching: a collected batch runs as length-sorted sub-batches within
a padded-token cap, and every request still gets exactly ``predict()``'s answer on its texts."""

import asyncio

import httpx
import pytest

from torchformer.serve.app import ServeLimits, create_app, text_lengths
from torchformer.serve.batching import MicroBatcher


class Recording:
    """The tiny classifier, recording the texts of each model call."""

    def __init__(self, classifier):
        self.classifier, self.calls = classifier, []
        self.labels = classifier.labels

    def __getattr__(self, name):
        return getattr(self.classifier, name)

    def predict(self, texts, *, batch_size=32):
        self.calls.append(list(texts))
        return self.classifier.predict(texts, batch_size=batch_size)


def _review(words: int, mood: str) -> str:
    filler = ["the", "film", "was", "really", "quite", "and", "story", "acting"]
    return " ".join([mood] + [filler[i % len(filler)] for i in range(words)])


# Short and long texts, sent together by several clients; some requests mix both.
REQUESTS = [
    [_review(2, "great")],
    [_review(60, "awful"), _review(1, "superb")],
    [_review(3, "dull")],
    [_review(45, "wonderful"), _review(50, "boring"), _review(2, "lovely")],
    [_review(1, "poor")],
    [_review(4, "brilliant"), _review(55, "terrible")],
]


async def _send_all(app, requests):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*(c.post("/predict", json={"texts": t}) for t in requests))


def test_each_request_gets_predict_alone_answers_from_length_sorted_sub_batches(tiny_classifier):
    predictor = Recording(tiny_classifier)
    # Everything sent within 300 ms is one collected batch; 150 padded tokens split it.
    limits = ServeLimits(max_texts=8, max_batch_size=64, max_batch_tokens=150, max_wait_ms=300)
    answers = asyncio.run(_send_all(create_app(predictor, limits=limits), REQUESTS))

    for texts, response in zip(REQUESTS, answers):
        assert response.status_code == 200, response.text
        got, alone = response.json()["predictions"], tiny_classifier.predict(texts)
        assert [p["label"] for p in got] == [p["label"] for p in alone]
        for g, a in zip(got, alone):
            assert g["probabilities"] == pytest.approx(a["probabilities"], abs=1e-5)
            assert g["confidence"] == pytest.approx(a["confidence"], abs=1e-5)

    measure = text_lengths(tiny_classifier)
    calls = [measure(call) for call in predictor.calls]  # token lengths of each model call
    assert sum(len(c) for c in calls) == sum(len(t) for t in REQUESTS)  # one batch, no retry
    assert len(calls) >= 2  # split by the token cap, not one call padded to the longest
    flat = [n for call in calls for n in call]
    assert flat == sorted(flat)  # shortest first, across and within calls
    for call in calls:
        assert len(call) == 1 or len(call) * max(call) <= 150


def test_token_lengths_are_the_model_inputs_and_empty_texts_count_zero(tiny_classifier):
    texts = ["a great film", _review(40, "dull"), "<br /><br />"]
    lengths = text_lengths(tiny_classifier)(texts)
    ids, _ = tiny_classifier.encode(texts[:2])  # (B, T), padded to the longest
    assert lengths[1] == ids.shape[1] > lengths[0] > 3 and lengths[2] == 0
    assert text_lengths(object())(["abc", "de"]) == [3, 2]  # no preprocessor: characters


def _scenario(predict, requests, **options):
    """Submit ``requests`` together; their answers and the order they were answered in."""

    async def run():
        batcher = MicroBatcher(predict, max_wait_ms=100, max_queue=100, **options)
        answered = []

        async def one(k, texts):
            result = await batcher.submit(texts)
            answered.append(k)
            return result

        results = await asyncio.gather(*(one(k, t) for k, t in enumerate(requests)))
        await batcher.close()
        return results, answered

    return asyncio.run(run())


def test_sub_batches_are_sorted_capped_and_answers_return_in_request_order():
    calls = []

    def predict(texts):
        calls.append(list(texts))
        return [t.upper() for t in texts]

    requests = [["x" * 30, "aa"], ["bbbb"], ["y" * 20, "c", "dd" * 5], ["e" * 3]]
    results, answered = _scenario(
        predict,
        requests,
        max_batch_size=8,
        max_batch_tokens=40,
        text_lengths=lambda ts: [len(t) for t in ts],
    )
    assert results == [[t.upper() for t in texts] for texts in requests]
    # Sorted 1, 2, 3, 4, 10, 20, 30 characters; packed while texts × longest <= 40.
    assert calls == [["c", "aa", "e" * 3, "bbbb"], ["dd" * 5, "y" * 20], ["x" * 30]]
    # A request is answered once its last text is done: the short ones before the long.
    assert answered == [3, 1, 2, 0]


def test_max_batch_size_still_caps_each_sub_batch():
    calls = []

    def predict(texts):
        calls.append(list(texts))
        return list(texts)

    requests = [[f"t{i}" for i in range(7)]]  # larger than a batch: collected alone
    results, _ = _scenario(
        predict,
        requests,
        max_batch_size=3,
        max_batch_tokens=1000,
        text_lengths=lambda ts: [2] * len(ts),
    )
    assert results == requests
    assert calls == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"]]


def test_a_failing_sub_batch_reruns_its_requests_alone_in_their_own_order():
    calls = []

    def predict(texts):
        calls.append(list(texts))
        for i, t in enumerate(texts):
            if t.startswith("BAD"):
                raise ValueError(f"texts[{i}] is bad: {t!r}")
        return [t.upper() for t in texts]

    async def run():
        batcher = MicroBatcher(
            predict,
            max_batch_size=8,
            max_batch_tokens=8,
            max_wait_ms=100,
            max_queue=100,
            text_lengths=lambda ts: [len(t) for t in ts],
        )
        answers = await asyncio.gather(
            batcher.submit(["a"]),
            batcher.submit(["long text", "BAD text"]),
            return_exceptions=True,
        )
        await batcher.close()
        return answers

    first, second = asyncio.run(run())
    assert first == ["A"]  # answered by the first sub-batch, before the failure
    assert isinstance(second, ValueError) and str(second) == "texts[1] is bad: 'BAD text'"
    # 1, 8, 9 characters: each its own sub-batch under 8 tokens; then the request alone.
    assert calls == [["a"], ["BAD text"], ["long text", "BAD text"]]
