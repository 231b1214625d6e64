"""``POST /generate``: text generation over HTTP, whole or streamed as server-sent events.

Served when the model is a language model (anything with ``stream(prompt, ...)``,
e.g. ``torchformer.load(run)`` of a language-model run). The body is JSON::

    {"prompt": "This movie was", "max_new_tokens": 60, "temperature": 0.8,
     "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.1, "no_repeat_ngram_size": 3,
     "greedy": false, "num_beams": 1, "seed": 0, "stop": ["\\n\\n"], "stream": true}

Only ``prompt`` is required; the other options default to the model's sampling
settings. Without ``stream`` the answer is ``{"text": prompt + continuation,
"completion": continuation}``. With ``"stream": true`` it is ``text/event-stream``:
one ``data: {"text": piece}`` event per piece as it is produced, then
``data: {"done": true, "completion": ...}``; a failure after the stream started is an
``event: error`` with the same ``{"error": {...}}`` body as any other error.

Errors, as for ``/predict`` (``{"error": {"status", "code", "message"}}``): 401
``unauthorized``; 413 ``body_too_large``, ``text_too_long`` (prompt over max_chars),
``too_many_tokens`` (max_new_tokens over the server's limit); 422 ``invalid_json``
(malformed or nested too deeply), ``invalid_request`` (unknown field, wrong type,
out-of-range option, a prompt that is not valid Unicode or that the tokenizer cannot
encode); 503 ``queue_full`` (``Retry-After: 1``); 500 ``generation_failed``. One generation runs at a time (the model uses every core);
up to ``max_generate_queue`` more wait.
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from torchformer.serve.app import (
    ERROR_SCHEMA,
    ApiError,
    ServeLimits,
    check_unicode,
    json_content,
    load_json,
    openapi_body,
    openapi_responses,
)

logger = logging.getLogger(__name__)

# field -> (accepted JSON types, check, rule shown in the error)
_FIELDS: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "prompt": ((str,), lambda v: True, "a string"),
    "max_new_tokens": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "min_new_tokens": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "temperature": ((int, float), lambda v: v > 0, "a number > 0"),
    "top_k": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "top_p": ((int, float), lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "repetition_penalty": ((int, float), lambda v: v > 0, "a number > 0"),
    "no_repeat_ngram_size": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "num_beams": ((int,), lambda v: 1 <= v <= 8, "an integer in 1..8"),
    "greedy": ((bool,), lambda v: True, "true or false"),
    "seed": ((int,), lambda v: 0 <= v < 2**63, "an integer in 0 .. 2**63 - 1"),
    "stop": (
        (list,),
        lambda v: len(v) <= 8 and all(isinstance(s, str) and 0 < len(s) <= 100 for s in v),
        "a list of at most 8 non-empty strings of at most 100 characters",
    ),
    "stream": ((bool,), lambda v: True, "true or false"),
}


def _request_schema(limits: ServeLimits) -> dict[str, Any]:
    """The OpenAPI (JSON Schema) form of ``_FIELDS`` under ``limits``."""
    integer, number = {"type": "integer"}, {"type": "number"}
    stop = {"type": "string", "minLength": 1, "maxLength": 100}
    properties = {
        "prompt": {"type": "string", "maxLength": limits.max_chars},
        "max_new_tokens": {**integer, "minimum": 1, "maximum": limits.max_new_tokens},
        "min_new_tokens": {**integer, "minimum": 0},
        "temperature": {**number, "exclusiveMinimum": 0},
        "top_k": {**integer, "minimum": 1},
        "top_p": {**number, "exclusiveMinimum": 0, "maximum": 1},
        "repetition_penalty": {**number, "exclusiveMinimum": 0},
        "no_repeat_ngram_size": {**integer, "minimum": 0},
        "num_beams": {**integer, "minimum": 1, "maximum": 8},
        "greedy": {"type": "boolean"},
        "seed": {**integer, "minimum": 0, "maximum": 2**63 - 1},
        "stop": {"type": "array", "items": stop, "maxItems": 8},
        "stream": {"type": "boolean"},
    }
    assert set(properties) == set(_FIELDS)  # one list of options
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": properties,
        "additionalProperties": False,
    }


_ANSWER_SCHEMA = {
    "type": "object",
    "required": ["text", "completion"],
    "properties": {"text": {"type": "string"}, "completion": {"type": "string"}},
}


# One server-sent event: a piece, the end, or an error (``event: error``).
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"enum": ["message", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["text"],
                        "properties": {"text": {"type": "string"}},
                    },
                    {
                        "type": "object",
                        "required": ["done", "completion"],
                        "properties": {"done": {"const": True}, "completion": {"type": "string"}},
                    },
                    ERROR_SCHEMA,
                ]
            },
        },
    },
}


def parse_generate(body: bytes, limits: ServeLimits) -> dict[str, Any]:
    """The options of a /generate body, or the ``ApiError`` it deserves."""
    payload = load_json(body)
    if not isinstance(payload, dict) or "prompt" not in payload:
        raise ApiError(422, "invalid_request", 'expected a JSON object {"prompt": "...", ...}')
    if unknown := sorted(set(payload) - set(_FIELDS)):
        raise ApiError(
            422, "invalid_request", f"unknown field(s) {unknown}; accepted: {sorted(_FIELDS)}"
        )
    for name, value in payload.items():
        types, ok, rule = _FIELDS[name]
        is_bool = isinstance(value, bool)
        if (is_bool and bool not in types) or not isinstance(value, types) or not ok(value):
            raise ApiError(422, "invalid_request", f"'{name}' must be {rule}, got {value!r}"[:300])
    if len(payload["prompt"]) > limits.max_chars:
        raise ApiError(
            413,
            "text_too_long",
            f"prompt has {len(payload['prompt'])} characters; at most {limits.max_chars}",
        )
    check_unicode(payload["prompt"], "prompt")
    wanted = payload.get("max_new_tokens", 0)
    if wanted > limits.max_new_tokens:
        raise ApiError(
            413,
            "too_many_tokens",
            f"max_new_tokens={wanted}; this server allows at most {limits.max_new_tokens}",
        )
    if payload.get("stream") and payload.get("num_beams", 1) > 1:
        raise ApiError(422, "invalid_request", "beam search (num_beams > 1) cannot stream")
    return payload


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


class GenerationGate:
    """One generation at a time; at most ``max_waiting`` more wait, the rest get 503."""

    def __init__(self, max_waiting: int) -> None:
        self.lock = asyncio.Lock()
        self.max_waiting, self.waiting = max_waiting, 0

    async def enter(self) -> None:
        if self.lock.locked() and self.waiting >= self.max_waiting:
            raise ApiError(
                503,
                "queue_full",
                f"{self.waiting} generations are waiting; retry later",
                {"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1

    def leave(self) -> None:
        self.lock.release()


def install_generate(
    app: Any, model: Any, limits: ServeLimits, check_key: Any, read_body: Any
) -> None:
    """Add ``POST /generate`` for ``model`` (with ``stream(prompt, **options)``) to ``app``."""
    from fastapi import Request
    from fastapi.responses import StreamingResponse
    from starlette.concurrency import run_in_threadpool

    gate = GenerationGate(limits.max_generate_queue)
    done = object()

    def start(options: dict[str, Any]) -> Iterator[str]:
        try:
            return model.stream(options.pop("prompt"), **options)
        except (ValueError, TypeError) as e:  # a bad prompt or option, named by the model
            raise ApiError(422, "invalid_request", str(e)[:500]) from None

    async def pieces(options: dict[str, Any], request: Any) -> AsyncIterator[str]:
        """Generate under the gate, one piece per worker-thread call."""
        await gate.enter()
        if await request.is_disconnected():  # it gave up while waiting for the gate
            gate.leave()
            return
        try:
            it = await run_in_threadpool(start, options)
            while (piece := await run_in_threadpool(next, it, done)) is not done:
                yield piece
                if await request.is_disconnected():  # nobody reads the rest
                    logger.info("client disconnected; generation stopped")
                    return
        finally:
            gate.leave()

    answers = {**json_content(_ANSWER_SCHEMA), "text/event-stream": {"schema": _EVENT_SCHEMA}}

    @app.post(
        "/generate",
        responses=openapi_responses(answers, (400, 401, 408, 413, 422, 499, 503)),
        openapi_extra=openapi_body(_request_schema(limits)),
    )
    async def generate(request: Request):
        check_key(request)
        options = parse_generate(await read_body(request, limits.max_body_bytes), limits)
        streaming = options.pop("stream", False)
        options.setdefault("max_new_tokens", min(limits.max_new_tokens, 256))
        prompt = options["prompt"]
        run = pieces(options, request)
        if not streaming:
            try:
                completion = "".join([piece async for piece in run])
            except ApiError:
                raise
            except Exception as e:
                logger.exception("generation failed")
                raise ApiError(500, "generation_failed", f"{type(e).__name__}: {e}") from None
            return {"text": prompt + completion, "completion": completion}
        # The first piece is awaited here, so that a bad request is still a plain JSON error.
        try:
            first = await run.__anext__()
        except StopAsyncIteration:
            first = None
        except ApiError:
            raise
        except Exception as e:
            logger.exception("generation failed")
            raise ApiError(500, "generation_failed", f"{type(e).__name__}: {e}") from None

        async def events() -> AsyncIterator[bytes]:
            completion = ""
            try:
                if first is not None:
                    completion += first
                    yield _sse({"text": first})
                    async for piece in run:
                        completion += piece
                        yield _sse({"text": piece})
                yield _sse({"done": True, "completion": completion})
            except Exception as e:
                logger.exception("generation failed while streaming")
                error = {
                    "status": 500,
                    "code": "generation_failed",
                    "message": f"{type(e).__name__}: {e}",
                }
                yield _sse({"error": error}, event="error")
            finally:
                await run.aclose()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
