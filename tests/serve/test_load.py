"""Load test: the real server (uvicorn, loopback only) under a burst of good and bad requests.

Small in CI (50 valid requests over 8 clients, 300 bad ones); raise LOAD_SCALE to stress it.
"""

import asyncio
import itertools
import os
from collections import Counter

import httpx
import pytest
from server_helpers import serving

from torchformer.serve.app import ServeLimits, create_app

SCALE = int(os.environ.get("LOAD_SCALE", "1"))
N_VALID, N_BAD, CLIENTS = 50 * SCALE, 300 * SCALE, 8
KEY = {"X-API-Key": "load-test-key"}
LIMITS = ServeLimits(max_texts=8, max_chars=2000, max_batch_size=16, max_wait_ms=5, max_queue=512)


def _bad_requests():
    """(description, request kwargs, expected status), cycling over every kind of bad request."""
    too_big = b'{"texts": ["' + b"z" * (LIMITS.max_body_bytes + 10) + b'"]}'
    kinds = [
        ("malformed json", {"content": b'{"texts": [', "headers": KEY}, 422),
        ("not an object", {"content": b'"great film"', "headers": KEY}, 422),
        ("texts not a list", {"json": {"texts": "great film"}, "headers": KEY}, 422),
        ("non-string text", {"json": {"texts": ["ok", 42]}, "headers": KEY}, 422),
        ("empty list", {"json": {"texts": []}, "headers": KEY}, 422),
        ("blank text", {"json": {"texts": [" \n "]}, "headers": KEY}, 422),
        ("too many texts", {"json": {"texts": ["good"] * 9}, "headers": KEY}, 413),
        ("text too long", {"json": {"texts": ["x" * 2001]}, "headers": KEY}, 413),
        ("body too large", {"content": too_big, "headers": KEY}, 413),
        ("no api key", {"json": {"texts": ["good"]}}, 401),
        ("wrong api key", {"json": {"texts": ["good"]}, "headers": {"X-API-Key": "guess"}}, 401),
    ]
    return list(itertools.islice(itertools.cycle(kinds), N_BAD))


async def _burst(base, requests):
    """Send (kwargs) POSTs to /predict, at most CLIENTS at a time; responses in order."""
    gate = asyncio.Semaphore(CLIENTS)
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one(kwargs):
            async with gate:
                return await client.post("/predict", **kwargs)

        return await asyncio.gather(*(one(kw) for kw in requests))


def test_server_answers_a_burst_correctly_and_survives_bad_requests(tiny_classifier):
    import deploy_fixtures

    pool = [t for t, _ in deploy_fixtures.toy_records(200, seed=11)]
    bodies = [pool[i * 3 % 200 : i * 3 % 200 + 1 + i % 3] for i in range(N_VALID)]  # 1-3 texts each
    app = create_app(tiny_classifier, limits=LIMITS, api_key=KEY["X-API-Key"])
    with serving(app) as served:
        base = served.url
        assert base.startswith("http://127.0.0.1:")
        valid = asyncio.run(_burst(base, [{"json": {"texts": b}, "headers": KEY} for b in bodies]))
        assert [r.status_code for r in valid] == [200] * N_VALID
        for texts, response in zip(bodies, valid):
            expected = tiny_classifier.predict(texts)
            got = response.json()["predictions"]
            assert [p["label"] for p in got] == [p["label"] for p in expected]
            for g, e in zip(got, expected):
                assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)

        bad = _bad_requests()
        answers = asyncio.run(_burst(base, [kwargs for _, kwargs, _ in bad]))
        wrong = [
            (what, r.status_code)
            for (what, _, status), r in zip(bad, answers)
            if r.status_code != status
        ]
        assert not wrong, wrong[:5]
        assert all(r.json()["error"]["status"] == r.status_code for r in answers)

        with httpx.Client(base_url=base, timeout=10) as client:
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            again = client.post("/predict", json={"texts": [pool[0]]}, headers=KEY)
            assert again.status_code == 200
            metrics = client.get("/metrics", headers=KEY).json()

    expected_counts = Counter(str(status) for _, _, status in bad)
    expected_counts["200"] += N_VALID + 1
    assert metrics["requests_by_endpoint"]["/predict"] == dict(expected_counts)
    assert metrics["texts_predicted_total"] == sum(len(b) for b in bodies) + 1
    assert (
        metrics["batch_size"]["count"] <= N_VALID + 1
    )  # grouped, never more batches than requests
    assert metrics["queue_depth"] == 0
