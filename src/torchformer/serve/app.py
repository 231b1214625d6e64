"""The HTTP server over ``predict()``: FastAPI app factory, limits, errors, metrics.

Endpoints:

- ``POST /predict`` ``{"texts": ["...", ...]}`` ->
  ``{"predictions": [{"label", "confidence", "probabilities": {label: p}}, ...]}``
  (classifiers: models with ``predict``)
- ``POST /predict`` with ``multipart/form-data`` image files -> the same answer, for
  image classifiers (``serve.images``: limits and errors of uploads)
- ``POST /generate`` ``{"prompt": "...", ...}`` -> the continuation, whole or streamed
  as server-sent events (language models; ``serve.generation``)
- ``GET /health`` -> ``{"status": "ok", "backend", "model", "labels", "queue_depth"}`` (no key
  needed; names only, no paths on disk)
- ``GET /metrics`` -> request counts by status and endpoint, /predict latency
  histogram, batch-size histogram, queue depth (JSON).

Every error is JSON ``{"error": {"status", "code", "message"}}``:

======  ==================================================================
400     ``invalid_host``: allowed hosts are configured and ``Host`` is not one of them
401     ``unauthorized``: an API key is configured and ``X-API-Key`` is missing or wrong
404     ``not_found``; 405 ``method_not_allowed``
408     ``request_timeout``: the body did not arrive within ``body_timeout_s``
413     ``body_too_large``, ``too_many_texts`` (> max_texts), ``text_too_long`` (> max_chars)
422     ``invalid_json`` (malformed, or nested too deeply), ``invalid_request`` (not
        ``{"texts": [str, ...]}``, an unknown field, an empty list, a non-string, blank or
        invalid Unicode text, a text the model refuses, e.g. empty after its cleaning)
503     ``queue_full``: the bounded queue is full (``Retry-After: 1``)
500     ``prediction_failed``: the model raised (logged; the server keeps serving);
        ``internal_error``: any other failure (logged, details not sent)
======  ==================================================================

Checks run in this order: host, key, body size and time, JSON syntax, shape, number of
texts, then each text (type, blank, length, Unicode), then the model's own checks (its
cleaning) on this request alone — so a request gets the first error found. Only then
does it join a micro-batch with other requests; should that batch still fail, each of its
requests is run again alone (``batching``), so one client's bad text never fails another
client's request, and an error names only the caller's own texts and indices. A client
that leaves mid-body is logged in one line (the traceback at DEBUG) and counted as 499.

``app.openapi()`` describes all of this (bodies, answers, errors; not served): the fuzz
tests (``tests/fuzz``) hold every answer to it.
"""

import asyncio
import functools
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torchformer.serve.batching import MicroBatcher, QueueFullError
from torchformer.serve.metrics import ServerMetrics
from torchformer.serve.openapi import (  # noqa: F401  (re-exported)
    _ERRORS,
    _HEALTH_SCHEMA,
    _METRICS_SCHEMA,
    _PREDICTION_SCHEMA,
    ERROR_SCHEMA,
    json_content,
    openapi_body,
    openapi_responses,
)

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
ROUTES = ("/predict", "/generate", "/health", "/metrics")


@dataclass
class ServeLimits:
    """Request limits and micro-batching settings."""

    max_texts: int = 64  # texts per request (413 above)
    max_chars: int = 20_000  # characters per text (413 above)
    max_batch_size: int = 32  # texts per model call
    max_batch_tokens: int = 4096  # padded tokens (texts × longest) per model call
    max_wait_ms: float = 10.0  # longest a request waits for a batch to fill
    max_queue: int = 256  # texts waiting before 503
    max_new_tokens: int = 512  # /generate: most tokens a request may ask for (413 above)
    max_generate_queue: int = 8  # /generate: requests waiting for the model before 503
    body_timeout_s: float = 30.0  # the whole body must arrive within this (408 after)
    max_images: int = 16  # image classifiers: images per request (413 above)
    max_image_bytes: int = 5_000_000  # image classifiers: bytes per uploaded file (413 above)
    max_image_pixels: int = 25_000_000  # image classifiers: width × height per image (413 above)

    @property
    def max_body_bytes(self) -> int:
        # Worst case JSON: every character escaped as \\uXXXX (6 bytes), plus quoting and commas.
        return self.max_texts * (self.max_chars * 6 + 8) + 4096

    @property
    def max_image_body_bytes(self) -> int:
        # Every file at its limit, plus multipart boundaries and part headers.
        return self.max_images * (self.max_image_bytes + 1024) + 4096


class ApiError(Exception):
    """An error answered as ``{"error": {"status", "code", "message"}}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"status": status, "code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


# --- the OpenAPI description (``app.openapi()``): what each route reads and answers --------
# The routes read their bodies themselves (size and time limits, then their own checks), so
# FastAPI cannot infer these: they are written out here, and the fuzz tests
# (tests/fuzz/test_server_schema.py) hold every answer to them.
def _image_request_body(limits: ServeLimits) -> dict[str, Any]:
    """``openapi_extra=`` for an image classifier's /predict: multipart file parts."""
    files = {
        "type": "array",
        "minItems": 1,
        "maxItems": limits.max_images,
        "items": {"type": "string", "format": "binary"},
    }
    schema = {"type": "object", "required": ["images"], "properties": {"images": files}}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def _predict_request_schema(limits: ServeLimits) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_chars}
    texts = {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_texts}
    return {
        "type": "object",
        "required": ["texts"],
        "properties": {"texts": texts},
        "additionalProperties": False,
    }


def load_predictor(
    path: str | os.PathLike, *, precision: str = "auto", threads: int | None = None
) -> Any:
    """A run / model directory (PyTorch) or an export directory (onnxruntime), ready to ``predict``.

    Args:
        precision: for export directories, "fp32", "int8", or "auto" (int8 when an
            int8 model passed the accuracy gate, else fp32); for a PyTorch text
            classifier, "fp32", "bf16" (bf16 weights), or "auto" (bf16 when its
            ``bf16_gate.json`` passed for these weights and the CPU has bf16 dot products,
            ``export.bf16.bf16_choice``; else fp32).

    Raises:
        ValueError: a precision the directory cannot be served in (int8 without an
            export, bf16 for an ONNX directory or on a CPU without bf16 dot products).
    """
    from torchformer.export.onnx import METADATA_NAME, ONNX_NAME, read_metadata

    directory = Path(path)
    if (directory / METADATA_NAME).is_file() or (directory / ONNX_NAME).is_file():
        from torchformer.export.runtime import OnnxClassifier, OnnxImageClassifier

        if precision == "bf16":
            raise ValueError(
                f"{directory}: bf16 serves a PyTorch run or model directory, not an ONNX export"
            )
        if read_metadata(directory).get("task") == "image_classification":
            if precision == "int8":
                raise ValueError(f"{directory}: no int8 model for image classifiers")
            return OnnxImageClassifier.from_dir(directory, threads=threads)

        if precision == "auto":
            gate = read_metadata(directory).get("int8", {}).get("gate", {})
            precision = "int8" if gate.get("passed") else "fp32"
        return OnnxClassifier.from_dir(directory, int8=precision == "int8", threads=threads)
    if precision == "int8":
        raise ValueError(
            f"{directory}: int8 serving needs an export directory made by `torchformer quantize`"
        )
    import torch

    from torchformer.api import TextClassifier, load
    from torchformer.export.bf16 import Bf16Choice, bf16_choice, to_bf16
    from torchformer.export.quantize import bf16_unsupported

    if threads:
        torch.set_num_threads(threads)
    if precision == "bf16":
        unsupported = bf16_unsupported()
        if unsupported is not None:
            raise ValueError(f"--precision bf16: {unsupported}")
    predictor = load(directory)
    if precision == "bf16":
        if not isinstance(predictor, TextClassifier):
            raise ValueError(
                f"{directory}: --precision bf16 is for text classifiers, "
                f"not a {type(predictor).__name__}"
            )
        try:
            choice = bf16_choice(directory)
        except ValueError as e:  # a damaged record: the user forced bf16 anyway
            choice = Bf16Choice(False, str(e))
        if not choice.use:
            logger.warning("serving bf16 weights without a passed accuracy gate: %s", choice.reason)
        return to_bf16(predictor)
    if precision == "auto" and isinstance(predictor, TextClassifier):
        choice = bf16_choice(directory)
        logger.info("precision %s: %s", "bf16" if choice.use else "fp32", choice.reason)
        if choice.use:
            return to_bf16(predictor)
    return predictor


def _check_key(request: Any, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get(API_KEY_HEADER)
    if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
        problem = "missing" if given is None else "wrong"
        raise ApiError(
            401, "unauthorized", f"{problem} API key: send it in the {API_KEY_HEADER} header"
        )


async def _read_body(request: Any, limit: int, *, timeout_s: float) -> bytes:
    """The body, at most ``limit`` bytes, all of it within ``timeout_s`` seconds.

    uvicorn has no body timeout: a client sending a byte a minute would hold its
    connection and its coroutine for ever.
    """
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "body_too_large", f"request body of {declared} bytes exceeds {limit} bytes"
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"request body not received within {timeout_s:g} s",
            {"Connection": "close"},  # the rest of the body may still come: do not reuse
        ) from None
    except ClientDisconnect:
        # Routine (a client timed out or was killed): one line, the traceback only at DEBUG.
        logger.debug("client disconnected mid-body", exc_info=True)
        logger.info("client %s disconnected before sending its whole body", _client(request))
        raise ApiError(499, "client_disconnected", "client disconnected mid-body") from None
    return b"".join(chunks)


def _client(request: Any) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def load_json(body: bytes) -> Any:
    """The JSON value of a request body, or a 422 ``invalid_json``."""
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(422, "invalid_json", f"request body is not valid JSON: {e}") from None
    except RecursionError:  # e.g. [[[[...]]]] 100,000 deep: small body, deep recursion
        raise ApiError(422, "invalid_json", "request body is nested too deeply") from None


def check_unicode(text: str, name: str) -> None:
    """422 for a text holding a lone surrogate (valid JSON "\\ud800", not valid Unicode:
    no tokenizer takes it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            422,
            "invalid_request",
            f"{name} is not valid Unicode: a lone surrogate at character {e.start}",
        ) from None


def parse_texts(body: bytes, limits: ServeLimits) -> list[str]:
    """The ``texts`` of a /predict body, or the ``ApiError`` it deserves."""
    payload = load_json(body)
    if not isinstance(payload, dict) or "texts" not in payload:
        raise ApiError(422, "invalid_request", 'expected a JSON object {"texts": ["...", ...]}')
    unknown = sorted(set(payload) - {"texts"})
    if unknown:
        raise ApiError(
            422, "invalid_request", f"unknown field(s) {unknown}; only 'texts' is accepted"
        )
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise ApiError(
            422, "invalid_request", f"'texts' must be a list of strings, got {type(texts).__name__}"
        )
    if not texts:
        raise ApiError(422, "invalid_request", "'texts' is empty; send at least one text")
    if len(texts) > limits.max_texts:
        raise ApiError(
            413, "too_many_texts", f"{len(texts)} texts; at most {limits.max_texts} per request"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(
                422, "invalid_request", f"texts[{i}] is {type(text).__name__}, expected a string"
            )
        if not text.strip():
            raise ApiError(422, "invalid_request", f"texts[{i}] is empty or whitespace only")
        if len(text) > limits.max_chars:
            raise ApiError(
                413,
                "text_too_long",
                f"texts[{i}] has {len(text)} characters; at most {limits.max_chars}",
            )
        check_unicode(text, f"texts[{i}]")
    return texts


def text_lengths(predictor: Any) -> Callable[[list[str]], list[int]]:
    """How the batcher measures texts to group them by length: tokens when the predictor
    has a text preprocessor (cleaning and a Rust tokenizer cost little next to the model;
    the count is the truncated one, what the model is padded to), else characters."""
    preprocessor = getattr(predictor, "preprocessor", None)
    if callable(getattr(preprocessor, "encode", None)) and callable(
        getattr(preprocessor, "clean", None)
    ):

        def tokens(texts: list[str]) -> list[int]:
            # A text that cleans to nothing (the tokenizer refuses it) counts 0: predict()
            # gives it its error, named for its own request (see ``batching``).
            cleaned, empty = preprocessor.clean(texts)
            refused = set(empty)
            kept = [i for i in range(len(texts)) if i not in refused]
            lengths = [0] * len(texts)
            for i, ids in zip(kept, preprocessor.encode([cleaned[i] for i in kept])):
                lengths[i] = len(ids)
            return lengths

        return tokens
    return lambda texts: [len(text) for text in texts]


async def check_alone(predictor: Any, texts: list[str]) -> None:
    """The model's own checks on one request's texts, before they join a batch.

    A text ``predict()`` would refuse (e.g. only HTML: empty after the run's cleaning) is
    found here, so its error names the caller's own index. Cleaning is cheap next to the
    model, and ``predict()`` cleans again: the texts stay as sent, so that the answer is
    exactly ``predict()``'s on them.
    """
    from starlette.concurrency import run_in_threadpool

    clean = getattr(predictor, "clean", None)  # classifiers have one; a fake may not
    if clean is None:
        return
    try:
        await run_in_threadpool(clean, texts)
    except (ValueError, TypeError) as e:
        raise ApiError(422, "invalid_request", str(e)[:300]) from None


class AllowedHosts:
    """Starlette's ``TrustedHostMiddleware`` deciding, answered with the usual JSON error.

    Its own refusal is plain text; here it only marks the requests it lets through.
    """

    def __init__(self, app: Any, allowed_hosts: Sequence[str]) -> None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        async def admit(scope: dict, receive: Any, send: Any) -> None:
            scope["torchformer.host_allowed"] = True

        self.app = app
        self.check = TrustedHostMiddleware(admit, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":

            async def discard(message: dict) -> None:
                pass

            await self.check(scope, receive, discard)
            if not scope.pop("torchformer.host_allowed", False):
                from starlette.datastructures import Headers

                host = Headers(scope=scope).get("host", "")[:100]
                response = error_response(400, "invalid_host", f"host {host!r} is not allowed")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _install_counting_and_errors(app: Any, metrics: ServerMetrics) -> None:
    """Count every request (status, latency) and answer every error as JSON."""
    from fastapi import Request
    from starlette.exceptions import HTTPException

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # a bug: logged, answered and counted like any other error
            logger.exception("unexpected error answering %s %s", request.method, request.url.path)
            response = error_response(500, "internal_error", "internal error; see the server log")
        path = request.url.path if request.url.path in ROUTES else "other"  # bounded label set
        metrics.record_request(path, response.status_code, (time.perf_counter() - start) * 1000)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(
            error.status_code, code, str(error.detail), getattr(error, "headers", None)
        )


async def _predict(batcher: MicroBatcher, texts: list[str]) -> list[Any]:
    """This request's predictions from the batcher; its errors, named as ``ApiError``."""
    try:
        return await batcher.submit(texts)
    except QueueFullError as e:
        raise ApiError(503, "queue_full", str(e), {"Retry-After": "1"}) from None
    except (ValueError, TypeError) as e:  # predict()'s own refusal of a text (run alone)
        raise ApiError(422, "invalid_request", str(e)[:300]) from None
    except Exception as e:
        logger.exception("prediction failed")
        raise ApiError(500, "prediction_failed", f"{type(e).__name__}: {e}"[:300]) from None


def _file_name(path: str | os.PathLike | None) -> str | None:
    return Path(path).name if path else None


def _weights_dtype(predictor: Any) -> str | None:
    """A PyTorch predictor's weight dtype ("float32", "bfloat16"); None for ONNX."""
    model = getattr(predictor, "model", None)
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return str(first.dtype).removeprefix("torch.") if first is not None else None


def create_app(
    predictor: Any,
    *,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    model_name: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Any:
    """A FastAPI app serving ``predictor`` (anything with ``predict(texts, batch_size=)`` and ``labels``).

    Args:
        limits: request limits and batching settings.
        api_key: when set, /predict and /metrics need it in the ``X-API-Key`` header.
        model_name: shown by /health (its last path component only).
        allowed_hosts: when set, the ``Host`` header must match one of these
            (``"api.example.com"``, ``"*.example.com"``); other requests get 400.
    """
    try:
        from fastapi import FastAPI, Request
    except ImportError as e:
        raise ImportError(
            "serving needs fastapi and uvicorn: pip install 'torchformer[serve]'"
        ) from e
    limits = limits or ServeLimits()
    metrics = ServerMetrics()
    generates = hasattr(predictor, "stream") and not hasattr(predictor, "predict")
    images = hasattr(predictor, "to_pixels")  # an image classifier: multipart uploads
    batcher = MicroBatcher(
        lambda texts: predictor.predict(texts, batch_size=limits.max_batch_size),
        max_batch_size=limits.max_batch_size,
        max_wait_ms=limits.max_wait_ms,
        max_queue=limits.max_queue,
        on_batch=metrics.record_batch,
        # Images are all one size: nothing to group. Texts: length-sorted sub-batches.
        text_lengths=None if images else text_lengths(predictor),
        max_batch_tokens=limits.max_batch_tokens,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()

    app = FastAPI(
        title="torchformer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.batcher, app.state.metrics, app.state.limits = batcher, metrics, limits

    if allowed_hosts:  # added first: inside the counting middleware, so refusals are counted
        app.add_middleware(AllowedHosts, allowed_hosts=list(allowed_hosts))
    _install_counting_and_errors(app, metrics)
    read_body = functools.partial(_read_body, timeout_s=limits.body_timeout_s)

    if generates:
        from torchformer.serve.generation import install_generate

        install_generate(app, predictor, limits, lambda r: _check_key(r, api_key), read_body)

    body_errors = (
        (400, 401, 408, 413, 415, 422, 499, 503) if images else (400, 401, 408, 413, 422, 499, 503)
    )
    predictions = {"type": "array", "items": _PREDICTION_SCHEMA}
    predict_ok = {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": predictions},
    }

    @app.post(
        "/predict",
        responses=openapi_responses(json_content(predict_ok), body_errors),
        openapi_extra=_image_request_body(limits)
        if images
        else openapi_body(_predict_request_schema(limits)),
        include_in_schema=not generates,  # a language model's server answers it with 404
    )
    async def predict(request: Request):
        if generates:
            raise ApiError(404, "not_found", "this server runs a language model: POST /generate")
        _check_key(request, api_key)
        if images:
            from torchformer.serve.images import check_content_type, decode_uploads, parse_uploads

            check_content_type(request.headers)  # before reading up to max_image_body_bytes
            body = await read_body(request, limits.max_image_body_bytes)
            uploads = await parse_uploads(request.headers, body, limits)
            pixels = await decode_uploads(predictor, uploads, limits)
            return {"predictions": await _predict(batcher, pixels)}
        texts = parse_texts(await read_body(request, limits.max_body_bytes), limits)
        await check_alone(predictor, texts)
        return {"predictions": await _predict(batcher, texts)}

    health_responses = openapi_responses(json_content(_HEALTH_SCHEMA), (400, 503))
    health_responses[503] = {"description": "unhealthy", "content": json_content(_HEALTH_SCHEMA)}

    @app.get("/health", responses=health_responses)
    async def health():
        body = {
            "status": "ok" if batcher.healthy else "unhealthy",
            "backend": getattr(predictor, "backend", "pytorch"),
            "model": Path(model_name).name if model_name else None,  # a name, not where it is
            "model_file": _file_name(getattr(predictor, "path", None)),  # ONNX: fp32 or int8
            "weights_dtype": _weights_dtype(predictor),  # PyTorch: float32 or bfloat16
            "labels": list(getattr(predictor, "labels", None) or []) or None,
            "endpoint": "/generate" if generates else "/predict",
            "queue_depth": batcher.queue_depth,
            "limits": asdict(limits),
        }
        if not batcher.healthy:
            from fastapi.responses import JSONResponse

            return JSONResponse(body, status_code=503)
        return body

    @app.get("/metrics", responses=openapi_responses(json_content(_METRICS_SCHEMA), (400, 401)))
    async def metrics_endpoint(request: Request):
        _check_key(request, api_key)
        return metrics.to_dict(queue_depth=batcher.queue_depth, queue_limit=limits.max_queue)

    return app
