"""The server's OpenAPI pieces: the one error shape, the answer schemas, and helpers that
document a route's body and responses (``app.openapi()`` serves them; Schemathesis tests
the server against them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer"},
                "code": {"type": "string"},
                "message": {"type": "string"},
            },
        }
    },
}
_ERRORS = {
    400: "invalid_host: the Host header is not an allowed host",
    401: "unauthorized: the API key is missing or wrong",
    404: "not_found: this server runs a model of the other kind",
    408: "request_timeout: the body did not arrive in time",
    413: "body_too_large, too_many_texts, text_too_long, too_many_tokens; images: "
    "too_many_images, image_too_large",
    415: "unsupported_media_type: an image classifier takes multipart/form-data uploads",
    422: "invalid_json, invalid_request (the message names the field or texts[i]); images: "
    "invalid_image (names images[i] and the file name)",
    499: "client_disconnected: the client left before sending its whole body",
    500: "prediction_failed, generation_failed, internal_error",
    503: "queue_full (Retry-After: 1), or the server is unhealthy",
}
_PREDICTION_SCHEMA = {
    "type": "object",
    "required": ["label", "confidence", "probabilities"],
    "properties": {
        "label": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}
_HEALTH_SCHEMA = {
    "type": "object",
    "required": ["status", "backend", "endpoint", "queue_depth", "limits"],
    "properties": {
        "status": {"enum": ["ok", "unhealthy"]},
        "backend": {"type": "string"},
        "model": {"type": ["string", "null"]},
        "model_file": {"type": ["string", "null"]},
        "weights_dtype": {"type": ["string", "null"]},
        "labels": {"type": ["array", "null"], "items": {"type": "string"}},
        "endpoint": {"enum": ["/predict", "/generate"]},
        "queue_depth": {"type": "integer", "minimum": 0},
        "limits": {"type": "object"},
    },
}
_METRICS_SCHEMA = {
    "type": "object",
    "required": ["requests_total", "requests_by_status", "requests_by_endpoint", "queue_depth"],
    "properties": {
        "requests_total": {"type": "integer", "minimum": 0},
        "requests_by_status": {"type": "object", "additionalProperties": {"type": "integer"}},
        "requests_by_endpoint": {"type": "object"},
        "predict_latency_ms": {"type": "object"},
        "batch_size": {"type": "object"},
        "batches_total": {"type": "integer"},
        "texts_predicted_total": {"type": "integer"},
        "queue_depth": {"type": "integer", "minimum": 0},
        "queue_limit": {"type": "integer"},
    },
}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi_responses(ok: dict[str, Any], errors: Sequence[int]) -> dict[int | str, Any]:
    """``responses=`` for a route: its 200 content and its JSON errors (and 500)."""
    responses: dict[int | str, Any] = {200: {"description": "OK", "content": ok}}
    for status in (*errors, 500):
        responses[status] = {"description": _ERRORS[status], "content": json_content(ERROR_SCHEMA)}
    return responses


def openapi_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra=`` documenting a JSON request body the route reads itself."""
    return {"requestBody": {"required": True, "content": json_content(schema)}}
