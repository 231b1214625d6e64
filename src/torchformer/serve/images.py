"""``POST /predict`` for image classifiers: ``multipart/form-data`` uploads.

    curl -F images=@cat.jpg -F images=@ship.png http://localhost:8000/predict

Each file part (any field name; ``images`` by convention) is one image. The body is read
under the same size and time limits as text requests (at most ``max_images`` images of
at most ``max_image_bytes`` each), parsed with python-multipart (through Starlette), and
every image is decoded on its own before it joins a micro-batch: a file that is not an
image is a 422 naming its index and file name, an oversized one a 413 — and neither
touches another client's request.

======  =================================================================
413     ``body_too_large``, ``too_many_images``, ``image_too_large`` (bytes, or pixels:
        width × height over ``max_image_pixels``, read before decoding)
415     ``unsupported_media_type``: not ``multipart/form-data``
422     ``invalid_request`` (no file part, a malformed multipart body),
        ``invalid_image`` (a part that is not a readable image)
======  =================================================================
"""

from __future__ import annotations

import asyncio
from typing import Any

from torchformer.serve.app import ApiError, ServeLimits

__all__ = ["decode_uploads", "parse_uploads"]


def check_content_type(headers: Any) -> None:
    """415 unless the request is ``multipart/form-data``."""
    if not headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "this server runs an image classifier: POST the images as multipart/form-data "
            "(curl -F images=@photo.jpg URL/predict)",
        )


async def parse_uploads(headers: Any, body: bytes, limits: ServeLimits) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every file part of a multipart body, or the ``ApiError``."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    check_content_type(headers)

    async def stream():
        yield body
        yield b""

    parser = MultiPartParser(
        headers,
        stream(),
        max_files=limits.max_images + 1,  # one over: counted below, answered as 413
        max_fields=16,
        max_part_size=64 * 1024,  # plain (non-file) fields only
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        text = str(e.message if hasattr(e, "message") else e)
        if "files" in text.lower():
            raise ApiError(
                413, "too_many_images", f"more than {limits.max_images} images in one request"
            ) from None
        raise ApiError(422, "invalid_request", f"malformed multipart body: {text}") from None
    try:
        return await _files(form, limits, UploadFile)
    finally:
        await form.close()  # spooled temporary files, also after an error


async def _files(form: Any, limits: ServeLimits, upload_type: type) -> list[tuple[str, bytes]]:
    files = [(key, value) for key, value in form.multi_items() if isinstance(value, upload_type)]
    if not files:
        raise ApiError(422, "invalid_request", "no file part in the body; send images=@FILE parts")
    if len(files) > limits.max_images:
        raise ApiError(
            413, "too_many_images", f"{len(files)} images; at most {limits.max_images} per request"
        )
    out = []
    for i, (_, upload) in enumerate(files):
        data = await upload.read()
        name = upload.filename or f"images[{i}]"
        if len(data) > limits.max_image_bytes:
            raise ApiError(
                413,
                "image_too_large",
                f"images[{i}] ({name}) has {len(data)} bytes; at most {limits.max_image_bytes}",
            )
        if not data:
            raise ApiError(422, "invalid_image", f"images[{i}] ({name}) is empty")
        out.append((name, data))
    return out


async def decode_uploads(
    predictor: Any, uploads: list[tuple[str, bytes]], limits: ServeLimits
) -> list[Any]:
    """Each upload decoded alone (uint8 (C, S, S)), off the event loop: a 413 for one over
    ``max_image_pixels`` (read from its header, before decoding), a 422 for one that is
    not a readable image; the message names its index and file name."""
    from torchformer.data.images import decode_image

    size, channels = predictor.normalization.size, predictor.channels

    def decode() -> list[Any]:
        import torch

        out = []
        for i, (name, data) in enumerate(uploads):
            where = f"images[{i}] ({name})"
            try:
                array = decode_image(
                    data,
                    channels=channels,
                    size=size,
                    name=where,
                    max_pixels=limits.max_image_pixels,
                )
            except ValueError as e:
                message = str(e)[:300]
                if "exceeds the limit" in message:
                    raise ApiError(413, "image_too_large", message) from None
                raise ApiError(422, "invalid_image", message) from None
            out.append(torch.from_numpy(array))
        return out

    return await asyncio.get_running_loop().run_in_executor(None, decode)
