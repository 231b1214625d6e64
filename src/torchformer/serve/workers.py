"""Several serving processes behind one port: ``torchformer serve RUN --workers N``.

One Python process runs one model call at a time (the batcher's one inference thread), and
a model's intra-op threads stop paying back well before a many-core machine's last core. N
worker processes, each with cores ÷ N threads, keep more of the machine busy. The processes
are uvicorn's own (``uvicorn.run(..., workers=N)``): it binds the port once, spawns N
workers sharing that socket (the kernel spreads connections over them) and restarts one
that dies. A spawned worker imports its app by name, so everything it needs travels in
one environment variable (``ENV_VAR``: JSON ``WorkerSettings``) that the parent sets and
the workers inherit: ``app_from_env`` is the app factory uvicorn calls in each worker,
and ``HeaderTimeoutProtocol`` the protocol class it imports there.

Each worker loads its own copy of the model (N × its memory) and has its own micro-batcher,
queue and ``/metrics``: a request is batched with others that reached the same worker.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torchformer.serve.app import ServeLimits
from torchformer.serve.server import ServerSettings, header_timeout_protocol, uvicorn_options

logger = logging.getLogger(__name__)

ENV_VAR = "TORCHFORMER_SERVE_WORKER"
APP_FACTORY = f"{__name__}:app_from_env"
PROTOCOL = f"{__name__}:HeaderTimeoutProtocol"


@dataclass
class WorkerSettings:
    """What a worker process needs to build its app: the model and every serving setting.

    The API key itself is not in it: only the name of the environment variable holding it
    (``api_key_env``), which the workers inherit too.
    """

    path: str
    precision: str = "auto"
    threads: int | None = None  # intra-op threads of this worker's model (None: the default)
    api_key_env: str | None = None
    model_name: str | None = None
    allowed_hosts: list[str] | None = None
    limits: ServeLimits = field(default_factory=ServeLimits)
    server: ServerSettings = field(default_factory=ServerSettings)

    def to_env(self) -> dict[str, str]:
        return {ENV_VAR: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Raises:
        KeyError: ``ENV_VAR`` is unset (this process was not started by ``run_workers``).
        """
        environ = os.environ if environ is None else environ
        if ENV_VAR not in environ:
            raise KeyError(f"{ENV_VAR} is unset: start workers with `torchformer serve --workers`")
        values = json.loads(environ[ENV_VAR])
        limits = ServeLimits(**values.pop("limits"))
        server = ServerSettings(**values.pop("server"))
        return cls(**values, limits=limits, server=server)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(workers: int, threads: int | None = None) -> int | None:
    """``threads`` when given; else one worker keeps the runtime's default (all cores) and
    N workers get cores ÷ N each (at least 1), so together they do not oversubscribe."""
    if threads is not None or workers <= 1:
        return threads
    return max(1, available_cores() // workers)


def create_worker_app(settings: WorkerSettings, environ: Mapping[str, str] | None = None) -> Any:
    """Load the model (with ``settings.threads`` threads) and build its app.

    Raises:
        KeyError: ``settings.api_key_env`` names a variable unset in ``environ``.
    """
    from torchformer.serve.app import create_app, load_predictor

    environ = os.environ if environ is None else environ
    api_key = None
    if settings.api_key_env:
        api_key = environ.get(settings.api_key_env)
        if not api_key:
            raise KeyError(f"{settings.api_key_env}: the API key variable is unset or empty")
    predictor = load_predictor(
        settings.path, precision=settings.precision, threads=settings.threads
    )
    logger.info(
        "worker %d: %s (%s), %s threads",
        os.getpid(),
        settings.model_name or settings.path,
        getattr(predictor, "backend", "pytorch"),
        settings.threads or "default",
    )
    return create_app(
        predictor,
        limits=settings.limits,
        api_key=api_key,
        model_name=settings.model_name,
        allowed_hosts=settings.allowed_hosts,
    )


def app_from_env() -> Any:
    """The app factory uvicorn calls in each worker: ``create_worker_app`` from ``ENV_VAR``.

    A worker that cannot load its model exits with uvicorn's startup-failure status, so the
    parent stops instead of restarting it for ever.
    """
    from uvicorn.config import STARTUP_FAILURE

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return create_worker_app(WorkerSettings.from_env())
    except Exception:
        logger.exception("worker %d could not start", os.getpid())
        sys.exit(STARTUP_FAILURE)


@functools.cache
def _protocol(header_timeout_s: float) -> type:
    return header_timeout_protocol(header_timeout_s)


def __getattr__(name: str) -> Any:
    # uvicorn imports the protocol class by name in each worker (``PROTOCOL``); a class made
    # in the parent cannot travel to a spawned process, so it is made here from ENV_VAR.
    if name == "HeaderTimeoutProtocol":
        return _protocol(WorkerSettings.from_env().server.header_timeout_s)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_workers(
    settings: WorkerSettings,
    *,
    workers: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Serve with ``workers`` uvicorn worker processes on one port, until stopped."""
    import uvicorn

    os.environ.update(settings.to_env())  # inherited by the spawned workers
    options = uvicorn_options(settings.server, host=host, port=port, log_level=log_level)
    options["http"] = PROTOCOL  # by name: each worker imports it
    uvicorn.run(APP_FACTORY, factory=True, workers=workers, **options)
