"""A mixed burst against the in-process server (issue 18): 200 valid requests and 20 poisoned
ones from 16 concurrent clients, merged into shared model calls by a batching window.

Every valid request must get 200 and exactly ``predict()``'s answer on its own texts; every
poisoned one (a lone surrogate, a text that cleans to nothing, a text that is not a string)
422 naming only its own bad index; and no answer may hold another request's text. The share
of valid requests answered correctly is recorded as ``burst_valid_ok_pct``.

Two ways the bad texts are found: before batching (the app's per-request ``clean``), or,
with ``clean`` hidden, only inside the merged model call (then each request is rerun alone).
"""

from __future__ import annotations

import asyncio
import json
import random
import re

import httpx
import pytest
from fuzzing import record_stats

from torchformer.serve.app import ServeLimits, create_app

VALID, POISONED, CLIENTS = 200, 20, 16
# Requests arriving within 100 ms share one model call of up to 256 texts.
MERGING = ServeLimits(
    max_texts=8, max_chars=300, max_batch_size=256, max_wait_ms=100, max_queue=4096
)
WORDS = ["a", "wonderful", "dull", "film", "the", "plot", "was", "superb", "awful", "cast"]
POISONS = ("surrogate", "html", "number", "null", "list")
TOTALS = {"valid": 0, "valid_ok": 0}


class Recording:
    """The tiny classifier, recording each model call; ``hide_clean`` hides its ``clean``."""

    def __init__(self, classifier, *, hide_clean: bool) -> None:
        self.classifier, self.hide_clean, self.batches = classifier, hide_clean, []
        self.labels = classifier.labels

    def __getattr__(self, name):
        if name == "clean" and self.hide_clean:
            raise AttributeError(name)
        return getattr(self.classifier, name)

    def predict(self, texts, *, batch_size=32):
        self.batches.append(list(texts))
        return self.classifier.predict(texts, batch_size=batch_size)


def _burst(seed: int) -> list[dict]:
    """220 requests in a seeded order: {"n", "body", "texts"/"bad_index"}."""
    rng = random.Random(seed)
    requests = []
    for n in range(VALID + POISONED):
        texts = [
            f"request{n} " + " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
            for _ in range(rng.randint(1, 3))
        ]
        requests.append({"n": n, "texts": texts})
    for i, n in enumerate(rng.sample(range(len(requests)), POISONED)):
        texts, bad = requests[n]["texts"], rng.randrange(len(requests[n]["texts"]))
        kind = POISONS[i % len(POISONS)]
        poison = {"surrogate": f"request{n} so \ud800 dull", "html": f'<img alt="request{n}"><br />',
                  "number": 12345, "null": None, "list": [f"request{n}"]}[kind]  # fmt: skip
        texts[bad] = poison
        requests[n] = {"n": n, "texts": texts, "bad_index": bad, "kind": kind}
    for r in requests:  # json.dumps writes a lone surrogate as \ud800 (httpx's json= cannot)
        r["body"] = json.dumps({"texts": r["texts"]}).encode()
    return requests


async def _send(app, requests: list[dict]) -> dict[int, httpx.Response]:
    """Each of CLIENTS clients sends its share of ``requests`` one after another."""
    transport = httpx.ASGITransport(app=app)
    answers: dict[int, httpx.Response] = {}

    async def client(share: list[dict]) -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            for r in share:
                headers = {"content-type": "application/json"}
                answers[r["n"]] = await c.post("/predict", content=r["body"], headers=headers)

    await asyncio.gather(*(client(requests[i::CLIENTS]) for i in range(CLIENTS)))
    return answers


@pytest.mark.parametrize("hide_clean", [False, True], ids=["checked-alone", "found-in-batch"])
def test_mixed_burst_of_220_requests_from_16_clients(tiny_classifier, hide_clean):
    requests = _burst(seed=18)
    predictor = Recording(tiny_classifier, hide_clean=hide_clean)
    answers = asyncio.run(_send(create_app(predictor, limits=MERGING), requests))

    valid_ok, problems = 0, []
    for r in requests:
        response = answers[r["n"]]
        others = set(re.findall(r"request(\d+)\b", response.text)) - {str(r["n"])}
        if others:
            problems.append(f"request {r['n']} was answered with the text of requests {others}")
        if "bad_index" not in r:
            ok = response.status_code == 200 and _same(
                response.json()["predictions"], tiny_classifier.predict(r["texts"])
            )
            valid_ok += ok
            if not ok:
                problems.append(f"request {r['n']}: {response.status_code} {response.text[:200]}")
            continue
        error = response.json().get("error", {}) if response.status_code == 422 else {}
        named = set(re.findall(r"texts\[(\d+)\]", error.get("message", "")))
        if error.get("code") != "invalid_request" or named != {str(r["bad_index"])}:
            problems.append(f"poisoned request {r['n']} ({r['kind']} at {r['bad_index']}): "
                            f"{response.status_code} {response.text[:200]}")  # fmt: skip

    TOTALS["valid"] += VALID
    TOTALS["valid_ok"] += valid_ok
    record_stats(burst_valid_ok_pct=round(100 * TOTALS["valid_ok"] / TOTALS["valid"], 2))
    assert not problems, "\n".join(problems[:20])
    assert valid_ok == VALID
    assert max(len(b) for b in predictor.batches) >= CLIENTS  # requests did share model calls
    if hide_clean:  # an emptied text did share a model call, and failed it
        assert any(len(b) > 3 and any("<img alt=" in t for t in b) for b in predictor.batches)


def _same(got: list[dict], expected: list[dict]) -> bool:
    if [p["label"] for p in got] != [p["label"] for p in expected]:
        return False
    return all(
        abs(g["probabilities"][k] - e["probabilities"][k]) <= 1e-5
        for g, e in zip(got, expected)
        for k in e["probabilities"]
    )


def test_the_burst_holds_each_kind_of_poison_four_times():
    requests = _burst(seed=18)
    kinds = [r["kind"] for r in requests if "bad_index" in r]
    assert len(requests) == VALID + POISONED
    assert sorted(kinds) == sorted(POISONS * (POISONED // len(POISONS)))
