"""The HTTP server over ``predict()``: FastAPI app factory, limits, errors, metrics.

Endpoints:

- ``POST /predict`` ``{"texts": ["...", ...]}`` ->
  ``{"predictions": [{"label", "confidence", "probabilities": {label: p}}, ...]}``
  (classifiers: models with ``predict``)
- ``POST /generate`` ``{"prompt": "...", ...}`` -> the continuation, whole or streamed
  as server-sent events (language models; ``serve.generation``)
- ``GET /health`` -> ``{"status": "ok", "backend", "model", "labels", "queue_depth"}`` (no key needed)
- ``GET /metrics`` -> request counts by status and endpoint, /predict latency
  histogram, batch-size histogram, queue depth (JSON).

Every error is JSON ``{"error": {"status", "code", "message"}}``:

======  ==================================================================
401     ``unauthorized``: an API key is configured and ``X-API-Key`` is missing or wrong
404     ``not_found``; 405 ``method_not_allowed``
413     ``body_too_large``, ``too_many_texts`` (> max_texts), ``text_too_long`` (> max_chars)
422     ``invalid_json`` (malformed body), ``invalid_request`` (not ``{"texts": [str, ...]}``,
        an unknown field, an empty list, a non-string or blank text)
503     ``queue_full``: the bounded queue is full (``Retry-After: 1``)
500     ``prediction_failed``: the model raised (logged; the server keeps serving)
======  ==================================================================

Checks run in this order: key, body size, JSON syntax, shape, number of texts,
then each text (type, blank, length) — so a request gets the first error found.
"""

import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torchformer.serve.batching import MicroBatcher, QueueFullError
from torchformer.serve.metrics import ServerMetrics

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
ROUTES = ("/predict", "/generate", "/health", "/metrics")


@dataclass
class ServeLimits:
    """Request limits and micro-batching settings."""

    max_texts: int = 64  # texts per request (413 above)
    max_chars: int = 20_000  # characters per text (413 above)
    max_batch_size: int = 32  # texts per model call
    max_wait_ms: float = 10.0  # longest a request waits for a batch to fill
    max_queue: int = 256  # texts waiting before 503
    max_new_tokens: int = 512  # /generate: most tokens a request may ask for (413 above)
    max_generate_queue: int = 8  # /generate: requests waiting for the model before 503

    @property
    def max_body_bytes(self) -> int:
        # Worst case JSON: every character escaped as \\uXXXX (6 bytes), plus quoting and commas.
        return self.max_texts * (self.max_chars * 6 + 8) + 4096


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


def load_predictor(
    path: str | os.PathLike, *, precision: str = "auto", threads: int | None = None
) -> Any:
    """A run / model directory (PyTorch) or an export directory (onnxruntime), ready to ``predict``.

    Args:
        precision: for export directories, "fp32", "int8", or "auto" (int8 when an
            int8 model passed the accuracy gate, else fp32).
    """
    from torchformer.export.onnx import METADATA_NAME, ONNX_NAME, read_metadata

    directory = Path(path)
    if (directory / METADATA_NAME).is_file() or (directory / ONNX_NAME).is_file():
        from torchformer.export.runtime import OnnxClassifier

        if precision == "auto":
            gate = read_metadata(directory).get("int8", {}).get("gate", {})
            precision = "int8" if gate.get("passed") else "fp32"
        return OnnxClassifier.from_dir(directory, int8=precision == "int8", threads=threads)
    if precision == "int8":
        raise ValueError(
            f"{directory}: int8 serving needs an export directory made by `torchformer quantize`"
        )
    import torch

    from torchformer.api import load

    if threads:
        torch.set_num_threads(threads)
    return load(directory)


def _check_key(request: Any, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get(API_KEY_HEADER)
    if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
        problem = "missing" if given is None else "wrong"
        raise ApiError(
            401, "unauthorized", f"{problem} API key: send it in the {API_KEY_HEADER} header"
        )


async def _read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "body_too_large", f"request body of {declared} bytes exceeds {limit} bytes"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_texts(body: bytes, limits: ServeLimits) -> list[str]:
    """The ``texts`` of a /predict body, or the ``ApiError`` it deserves."""
    try:
        payload = json.loads(body)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(422, "invalid_json", f"request body is not valid JSON: {e}") from None
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
    return texts


def _install_counting_and_errors(app: Any, metrics: ServerMetrics) -> None:
    """Count every request (status, latency) and answer every error as JSON."""
    from fastapi import Request
    from starlette.exceptions import HTTPException

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
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


def create_app(
    predictor: Any,
    *,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    model_name: str | None = None,
) -> Any:
    """A FastAPI app serving ``predictor`` (anything with ``predict(texts, batch_size=)`` and ``labels``).

    Args:
        limits: request limits and batching settings.
        api_key: when set, /predict and /metrics need it in the ``X-API-Key`` header.
        model_name: shown by /health.
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
    batcher = MicroBatcher(
        lambda texts: predictor.predict(texts, batch_size=limits.max_batch_size),
        max_batch_size=limits.max_batch_size,
        max_wait_ms=limits.max_wait_ms,
        max_queue=limits.max_queue,
        on_batch=metrics.record_batch,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()

    app = FastAPI(
        title="torchformer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.batcher, app.state.metrics, app.state.limits = batcher, metrics, limits

    _install_counting_and_errors(app, metrics)

    if generates:
        from torchformer.serve.generation import install_generate

        install_generate(app, predictor, limits, lambda r: _check_key(r, api_key), _read_body)

    @app.post("/predict")
    async def predict(request: Request):
        if generates:
            raise ApiError(404, "not_found", "this server runs a language model: POST /generate")
        _check_key(request, api_key)
        texts = parse_texts(await _read_body(request, limits.max_body_bytes), limits)
        try:
            predictions = await batcher.submit(texts)
        except QueueFullError as e:
            raise ApiError(503, "queue_full", str(e), {"Retry-After": "1"}) from None
        except Exception as e:
            logger.exception("prediction failed")
            raise ApiError(500, "prediction_failed", f"{type(e).__name__}: {e}") from None
        return {"predictions": predictions}

    @app.get("/health")
    async def health():
        body = {
            "status": "ok" if batcher.healthy else "unhealthy",
            "backend": getattr(predictor, "backend", "pytorch"),
            "model": model_name,
            "model_file": str(getattr(predictor, "path", None) or "") or None,  # ONNX: fp32 or int8
            "labels": list(getattr(predictor, "labels", None) or []) or None,
            "endpoint": "/generate" if generates else "/predict",
            "queue_depth": batcher.queue_depth,
            "limits": asdict(limits),
        }
        if not batcher.healthy:
            from fastapi.responses import JSONResponse

            return JSONResponse(body, status_code=503)
        return body

    @app.get("/metrics")
    async def metrics_endpoint(request: Request):
        _check_key(request, api_key)
        return metrics.to_dict(queue_depth=batcher.queue_depth, queue_limit=limits.max_queue)

    return app
