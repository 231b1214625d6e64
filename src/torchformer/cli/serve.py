"""``torchformer serve``: the HTTP server (FastAPI + uvicorn) over a run or an export directory."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from torchformer.serve.app import ServeLimits
from torchformer.serve.server import ServerSettings

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(subparsers: argparse._SubParsersAction) -> None:
    d, s = ServeLimits(), ServerSettings()
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (POST /predict or /generate, GET /health, GET /metrics)",
        description="Serve a run / model directory (PyTorch) or an export directory (onnxruntime). "
        "Concurrent requests are micro-batched; limits answer with JSON errors (401, 413, 422, 503).",
    )
    p.add_argument(
        "path",
        help="run directory, model directory, or export directory (torchformer export/quantize)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-batch-size", type=int, default=d.max_batch_size, help="texts per model call"
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=d.max_batch_tokens,
        help="padded tokens (texts × longest) per model call: a batch runs as length-sorted "
        "sub-batches within this and --max-batch-size",
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=d.max_wait_ms, help="longest wait for a batch to fill"
    )
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="texts waiting before 503")
    p.add_argument(
        "--max-texts", type=int, default=d.max_texts, help="texts per request before 413"
    )
    p.add_argument(
        "--max-chars", type=int, default=d.max_chars, help="characters per text before 413"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=d.max_new_tokens,
        help="language models: most tokens one /generate request may ask for",
    )
    p.add_argument(
        "--max-generate-queue",
        type=int,
        default=d.max_generate_queue,
        help="language models: /generate requests waiting before 503",
    )
    p.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="require the key held in environment variable NAME in the X-API-Key header",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8", "bf16"],
        default="auto",
        help="auto: int8 (export directories) or bf16 weights (PyTorch classifiers) when "
        "it passed its accuracy gate (`torchformer quantize`) and the CPU has the "
        "instructions for it, else fp32; or force one",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes behind the port, each with its own copy of the model (default 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="inference threads per worker (default: all cores; with --workers N, cores ÷ N)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=int,
        default=s.limit_concurrency,
        help="open connections before uvicorn itself answers 503",
    )
    p.add_argument(
        "--allowed-hosts",
        nargs="+",
        metavar="HOST",
        help="answer only requests whose Host header is one of these (e.g. api.example.com "
        "'*.example.com'); others get 400 (default: any host)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=d.body_timeout_s,
        help="seconds a request body may take to arrive before 408",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=s.header_timeout_s,
        help="seconds a request line and headers may take to arrive before the connection is closed",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=int,
        default=s.keep_alive_s,
        help="seconds an idle keep-alive connection stays open",
    )
    p.add_argument(
        "--graceful-shutdown-timeout",
        type=int,
        default=s.graceful_shutdown_s,
        help="on shutdown, seconds requests in flight get to finish before they are cancelled",
    )
    p.add_argument(
        "--max-header-bytes",
        type=int,
        default=s.max_header_bytes,
        help="largest request line and headers, in bytes",
    )
    p.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print(
            "error: serving needs fastapi and uvicorn: pip install 'torchformer[serve]'",
            file=sys.stderr,
        )
        return 2
    from torchformer.serve.server import uvicorn_config
    from torchformer.serve.workers import (
        WorkerSettings,
        create_worker_app,
        run_workers,
        threads_per_worker,
    )

    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(
                f"error: --api-key-env {args.api_key_env}: that environment variable is unset or empty",
                file=sys.stderr,
            )
            return 2
    if not is_loopback(args.host):
        logger.warning(
            "binding to %s: the server is reachable from other machines%s",
            args.host,
            "" if api_key else " and has NO API key (use --api-key-env)",
        )
    limits = ServeLimits(
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_new_tokens=args.max_new_tokens,
        max_generate_queue=args.max_generate_queue,
        body_timeout_s=args.body_timeout,
    )
    settings = ServerSettings(
        header_timeout_s=args.header_timeout,
        keep_alive_s=args.keep_alive_timeout,
        graceful_shutdown_s=args.graceful_shutdown_timeout,
        max_header_bytes=args.max_header_bytes,
        limit_concurrency=args.limit_concurrency,
    )
    worker = WorkerSettings(
        path=str(args.path),
        precision=args.precision,
        threads=threads_per_worker(args.workers, args.threads),
        api_key_env=args.api_key_env,
        model_name=str(args.path),
        allowed_hosts=args.allowed_hosts,
        limits=limits,
        server=settings,
    )
    where = f"http://{args.host}:{args.port}"
    if args.workers > 1:
        if not os.path.exists(args.path):  # before N workers each fail on it
            raise FileNotFoundError(f"{args.path}: no such run, model or export directory")
        logger.info("serving %s on %s: %d workers", args.path, where, args.workers)
        run_workers(worker, workers=args.workers, host=args.host, port=args.port)
        return 0
    app = create_worker_app(worker)
    logger.info("serving %s on %s", args.path, where)
    uvicorn.Server(uvicorn_config(app, settings=settings, host=args.host, port=args.port)).run()
    return 0
