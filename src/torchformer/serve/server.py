"""The uvicorn server around the app: connection limits, slow-client timeouts, shutdown deadline.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and bounds the size
of a request's head (``h11_max_incomplete_event_size``), but sets no deadline on the head
itself: a client that sends its headers a byte at a time (slowloris) holds a connection
for ever. ``HeaderTimeoutProtocol`` adds that deadline to uvicorn's h11 protocol. The
body's deadline is the app's (``ServeLimits.body_timeout_s``): uvicorn has none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    """How uvicorn treats connections (the app's own limits are ``ServeLimits``)."""

    header_timeout_s: float = 10.0  # the request line and headers must arrive within this
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    graceful_shutdown_s: int = 30  # on shutdown, requests in flight get this long to finish
    max_header_bytes: int = 16 * 1024  # request line and headers, at most (431/400 above)
    limit_concurrency: int = 1024  # open connections before uvicorn itself answers 503


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete
    ``seconds`` after the connection opened or the previous response ended."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is in (or was refused)
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE:  # waiting for the next request's head
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            if not self.transport.is_closing():
                self._header_timer = self.loop.call_later(seconds, self._header_timed_out)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                logger.debug("closing %s: no request head within %g s", self.client, seconds)
                self.transport.close()

    return HeaderTimeoutProtocol


def uvicorn_options(
    settings: ServerSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> dict[str, Any]:
    """The keyword arguments ``torchformer serve`` gives ``uvicorn.Config`` / ``uvicorn.run``
    (``http``: the header-deadline protocol class)."""
    settings = settings or ServerSettings()
    return {
        "host": host,
        "port": port,
        "http": header_timeout_protocol(settings.header_timeout_s),
        "limit_concurrency": settings.limit_concurrency,
        "timeout_keep_alive": settings.keep_alive_s,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "server_header": False,
        "log_level": log_level,
    }


def uvicorn_config(
    app: Any,
    *,
    settings: ServerSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> Any:
    """The ``uvicorn.Config`` that ``torchformer serve`` runs ``app`` with."""
    import uvicorn

    options = uvicorn_options(settings, host=host, port=port, log_level=log_level)
    return uvicorn.Config(app, **options)
