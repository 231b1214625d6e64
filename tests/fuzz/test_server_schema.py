"""Schemathesis against the server's OpenAPI description (issue 18): no 5xx, and every answer
as documented, for generated valid and invalid requests.

Two apps, called in-process (ASGI, no network): the tiny classifier (``/predict``,
``/health``, ``/metrics``) and a tiny real language model (``/generate``, whose prompts go
through a real byte-level BPE tokenizer and real sampling). Schemathesis runs its phases on
each operation: the schema's examples, its coverage phase (boundary values, missing and
wrong-typed fields) and Hypothesis fuzzing of valid and invalid bodies. Each answer must not
be a 5xx and must match its status code, content type and body schema in ``app.openapi()``.

The requests actually made are counted where the app receives them; the totals go to the
stats file (``fuzz_requests``, ``fuzz_5xx``; see ``fuzzing.record_stats``).
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from fuzzing import FUZZ, record_stats, tiny_language_model
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from torchformer.serve.app import ServeLimits, create_app

LIMITS = ServeLimits(max_texts=8, max_chars=300, max_wait_ms=1, max_new_tokens=8)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Fuzzed examples per operation (the explicit-example and coverage phases add their own;
# /health and /metrics take no input, so Hypothesis stops after the few they have).
EXAMPLES = 300
MIN_REQUESTS = 500


class CountingApp:
    """Wraps an ASGI app and counts the answers it sends, by (path, status)."""

    def __init__(self, app, tally: Counter) -> None:
        self.app, self.tally = app, tally

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.tally[(scope["path"], message["status"])] += 1
            await send(message)

        return await self.app(scope, receive, counting_send)


class LazyClassifier:
    """The session's tiny classifier, built on the first request, not at collection."""

    def __init__(self) -> None:
        import deploy_fixtures

        self.build = deploy_fixtures.tiny_classifier  # cached: shared with the fixture

    @property
    def labels(self):
        return self.build().labels

    def clean(self, texts):
        return self.build().clean(texts)

    def predict(self, texts, *, batch_size=32):
        return self.build().predict(texts, batch_size=batch_size)


class LazyLanguageModel:
    """The tiny language model, built on the first request."""

    model = None

    def stream(self, prompt, **options):
        if LazyLanguageModel.model is None:
            LazyLanguageModel.model = tiny_language_model()
        return self.model.stream(prompt, **options)


TALLY: Counter = Counter()  # (path, status) -> answers, over both apps


def _schema(app):
    # Loaded from the app's own description (it is not served: openapi_url=None).
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = CountingApp(app, TALLY)
    schema.config.generation.update(modes=["positive", "negative"])
    return schema


# Built at import (schemathesis parametrizes at collection); the models come on first use.
classifier_api = _schema(create_app(LazyClassifier(), limits=LIMITS))
generator_api = _schema(create_app(LazyLanguageModel(), limits=LIMITS))


@classifier_api.parametrize()
@settings(FUZZ, max_examples=EXAMPLES)
def test_classifier_server_answers_as_documented(case):
    case.call_and_validate(checks=CHECKS)


@generator_api.parametrize()
@settings(FUZZ, max_examples=EXAMPLES)
def test_generation_server_answers_as_documented(case):
    case.call_and_validate(checks=CHECKS)


def test_the_documented_schema_covers_every_route_and_error(tiny_classifier):
    spec = create_app(tiny_classifier, limits=LIMITS).openapi()
    predict = spec["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["texts"]["maxItems"] == LIMITS.max_texts
    assert {"200", "401", "413", "422", "503"} <= set(predict["responses"])
    error = predict["responses"]["422"]["content"]["application/json"]["schema"]
    assert error["properties"]["error"]["required"] == ["status", "code", "message"]
    assert set(spec["paths"]) == {"/predict", "/health", "/metrics"}
    lm_spec = create_app(tiny_language_model(), limits=LIMITS).openapi()
    assert set(lm_spec["paths"]) == {"/generate", "/health", "/metrics"}
    generate = lm_spec["paths"]["/generate"]["post"]
    options = generate["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert options["max_new_tokens"]["maximum"] == LIMITS.max_new_tokens
    assert set(generate["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


def test_enough_requests_and_no_server_error(request):
    """Runs after the fuzz tests of this module (pytest keeps file order): their totals."""
    fuzzed = {"test_classifier_server_answers_as_documented",
              "test_generation_server_answers_as_documented"}  # fmt: skip
    selected = {getattr(item, "originalname", item.name) for item in request.session.items}
    if not fuzzed <= selected:
        pytest.skip("the fuzz tests of this module were not selected")
    tally = TALLY
    total = sum(tally.values())
    errors = sum(n for (_, status), n in tally.items() if status >= 500)
    by_path = Counter()
    for (path, _), n in tally.items():
        by_path[path] += n
    record_stats(fuzz_requests=total, fuzz_5xx=errors)
    print(f"answers by path and status: {dict(sorted(tally.items()))}")
    assert errors == 0
    assert total >= MIN_REQUESTS, dict(by_path)
    assert by_path["/predict"] >= 100 and by_path["/generate"] >= 100
