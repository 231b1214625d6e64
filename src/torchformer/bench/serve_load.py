"""Server load benchmark: throughput and latency of ``POST /predict`` at a fixed request rate.

Open loop: request i starts at ``t0 + i / rate`` whatever became of the earlier ones, as
requests from many independent clients do, and its latency is counted from that scheduled
time. A closed loop (N clients, each sending its next request once its last is answered)
slows down with the server, so it never sees a queue build up; here, once the rate is
more than the server can take, latency grows with the run and the achieved throughput
stays below the rate, and both show in the report. Latency therefore includes every
wait: the server's queue and batching window, and any wait for one of the client's
``concurrency_limit`` connections (``waited_for_connection`` counts those requests).

If the generator itself falls behind its schedule (a busy client machine), the requests
it starts late are counted in ``late_starts`` (more than ``LATE_AFTER_MS`` behind); a
run with many is measuring the client, not the server.

    torchformer bench serve http://127.0.0.1:8000 --rate 50 --duration 30 --out load.json
    torchformer bench serve --server runs/imdb --workers 2 --rate 50 --duration 30

``--server RUN`` starts ``torchformer serve RUN`` in a subprocess on a free loopback port,
waits for ``/health``, runs the load and stops it. Texts default to a balanced sample of
IMDB test reviews (the deployment bench's sample, ``bench.deploy.bench_texts``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

LATE_AFTER_MS = 10.0  # a request started this much after its scheduled time is late
HEALTH_TIMEOUT_S = 180.0  # --server: longest wait for the server to answer /health


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99 (linear interpolation), max and mean, in milliseconds (None: no values)."""
    keys = ("p50", "p90", "p99", "max", "mean")
    if not seconds:
        return dict.fromkeys(keys)
    import numpy as np

    ms = np.asarray(seconds, dtype=float) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    values = (p50, p90, p99, ms.max(), ms.mean())
    return {k: round(float(v), 3) for k, v in zip(keys, values)}


def _request_texts(texts: Sequence[str], i: int, k: int) -> list[str]:
    """Request ``i``'s ``k`` texts: the sample in order, round and round."""
    return [texts[(i * k + j) % len(texts)] for j in range(k)]


async def _load(
    url: str,
    texts: Sequence[str],
    *,
    rate: float,
    n_requests: int,
    texts_per_request: int,
    concurrency_limit: int,
    timeout_s: float,
    headers: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Start ``n_requests`` POSTs on the open-loop schedule; what each one came to."""
    import httpx

    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency_limit)
    limits = httpx.Limits(max_connections=concurrency_limit, max_keepalive_connections=None)
    timeout = httpx.Timeout(timeout_s, pool=None)  # the pool wait is the semaphore's
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    waited = 0

    async def one(client: httpx.AsyncClient, i: int, scheduled: float) -> None:
        nonlocal waited
        waited += gate.locked()
        async with gate:
            try:
                response = await client.post(
                    "/predict", json={"texts": _request_texts(texts, i, texts_per_request)}
                )
                outcome = "ok" if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as error:
                outcome = type(error).__name__
        outcomes[outcome] += 1
        if outcome == "ok":
            latencies.append(loop.time() - scheduled)

    lags, tasks = [], []
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=timeout, headers=dict(headers or {})
    ) as client:
        start = loop.time()
        for i in range(n_requests):
            scheduled = start + i / rate
            if (delay := scheduled - loop.time()) > 0:
                await asyncio.sleep(delay)
            lags.append(loop.time() - scheduled)
            tasks.append(asyncio.create_task(one(client, i, scheduled)))
        await asyncio.gather(*tasks)
        wall_s = loop.time() - start
    return {
        "latencies": latencies,
        "outcomes": outcomes,
        "lags": lags,
        "waited": waited,
        "wall_s": wall_s,
    }


def run_load(
    url: str,
    texts: Sequence[str],
    *,
    rate: float,
    duration_s: float,
    texts_per_request: int = 1,
    concurrency_limit: int = 64,
    timeout_s: float = 60.0,
    headers: Mapping[str, str] | None = None,
    warmup_requests: int = 0,
) -> dict[str, Any]:
    """An open-loop load on ``url``'s ``POST /predict``: ``rate`` requests per second for
    ``duration_s`` seconds (``round(rate × duration_s)`` requests), each of
    ``texts_per_request`` texts taken in turn from ``texts``.

    Args:
        concurrency_limit: most requests in flight (connections); more wait for one.
        timeout_s: a request not answered in this long is an error (``ReadTimeout``).
        headers: sent with every request (e.g. ``{"X-API-Key": ...}``).
        warmup_requests: sent one at a time before the load, not counted.

    Returns:
        The report: ``requests``, ``ok``, ``errors`` (and ``errors_by_kind``: HTTP status or
        exception name), ``throughput_requests_per_s`` and ``throughput_texts_per_s``
        (answered requests over ``wall_s``, from the first scheduled start to the last
        answer), ``latency_ms`` (p50/p90/p99/max/mean of the answered requests, from their
        scheduled start), ``late_starts`` and ``max_start_lag_ms`` (the generator's own
        delays), ``waited_for_connection``; and the settings.

    Raises:
        ValueError: a non-positive rate, duration, texts per request or limit, or no texts.
    """
    if rate <= 0 or duration_s <= 0 or texts_per_request < 1 or concurrency_limit < 1:
        raise ValueError(
            "rate, duration_s, texts_per_request and concurrency_limit must be positive, got "
            f"{rate}, {duration_s}, {texts_per_request}, {concurrency_limit}"
        )
    if not texts:
        raise ValueError("no texts to send")
    if warmup_requests:
        _warm_up(url, texts, warmup_requests, texts_per_request, timeout_s, headers)
    n_requests = max(1, round(rate * duration_s))
    raw = asyncio.run(
        _load(
            url,
            texts,
            rate=rate,
            n_requests=n_requests,
            texts_per_request=texts_per_request,
            concurrency_limit=concurrency_limit,
            timeout_s=timeout_s,
            headers=headers,
        )
    )
    return _report(url, raw, rate, duration_s, n_requests, texts_per_request, concurrency_limit)


def _warm_up(url, texts, n, texts_per_request, timeout_s, headers) -> None:
    """``n`` requests one after another (first model calls, connections); answers unchecked."""
    import httpx

    with httpx.Client(base_url=url, timeout=timeout_s, headers=dict(headers or {})) as client:
        for i in range(n):
            with contextlib.suppress(httpx.HTTPError):
                client.post("/predict", json={"texts": _request_texts(texts, i, texts_per_request)})


def _report(url, raw, rate, duration_s, n_requests, texts_per_request, concurrency_limit):
    outcomes, wall_s = raw["outcomes"], raw["wall_s"]
    ok = outcomes.get("ok", 0)
    errors = {kind: n for kind, n in sorted(outcomes.items()) if kind != "ok"}
    return {
        "url": url,
        "rate": rate,
        "duration_s": duration_s,
        "texts_per_request": texts_per_request,
        "concurrency_limit": concurrency_limit,
        "requests": n_requests,
        "ok": ok,
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "wall_s": round(wall_s, 4),
        "throughput_requests_per_s": round(ok / wall_s, 3),
        "throughput_texts_per_s": round(ok * texts_per_request / wall_s, 3),
        "latency_ms": latency_summary(raw["latencies"]),
        "late_starts": sum(lag * 1000 > LATE_AFTER_MS for lag in raw["lags"]),
        "max_start_lag_ms": round(max(raw["lags"]) * 1000, 3),
        "waited_for_connection": raw["waited"],
    }


# --- --server: a `torchformer serve` subprocess for the length of the run -----------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(run: str | os.PathLike, serve_args: Sequence[str] = ()) -> Iterator[str]:
    """``torchformer serve run *serve_args`` on a free loopback port; its URL once ``/health``
    answers 200. The server is stopped on exit.

    Raises:
        RuntimeError: the server exited, or did not answer within ``HEALTH_TIMEOUT_S``
            (the message ends with its log).
    """
    port = free_port()
    command = [sys.executable, "-m", "torchformer", "serve", str(run), "--port", str(port)]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would block it
        server = subprocess.Popen([*command, *serve_args], stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_healthy(url, server, log)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_until_healthy(url: str, server: subprocess.Popen, log: Any) -> None:
    import httpx

    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            problem = "exited" if server.poll() is not None else "did not answer /health"
            raise RuntimeError(f"the server {problem}; its log:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.2)


def _what_is_served(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``/health``'s backend, model file and weight dtype ({} when it does not answer)."""
    import httpx

    try:
        health = httpx.get(f"{url}/health", headers=headers, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {k: health.get(k) for k in ("backend", "model", "model_file", "weights_dtype")}


# --- the command -------------------------------------------------------------------------
def load_texts(
    texts_file: str | None, *, n: int, seed: int, text_column: str
) -> tuple[list[str], str]:
    """The texts to send and where they came from: the first ``n`` of a file (CSV, TSV,
    JSONL, JSON), or a balanced sample of ``n`` IMDB test reviews (the deployment bench's)."""
    from torchformer.bench.deploy import BenchSettings, bench_texts

    settings = BenchSettings(
        n_texts=n, seed=seed, texts_file=texts_file, text_column=text_column, label_column=None
    )
    texts, _, source = bench_texts(settings)
    return texts, source


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchformer bench serve", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("url", nargs="?", help="the server, e.g. http://127.0.0.1:8000 (or --server)")
    p.add_argument("--server", metavar="RUN", help="start `torchformer serve RUN` for the run")
    p.add_argument("--workers", type=int, default=1, help="--server: its worker processes")
    p.add_argument("--threads", type=int, default=None, help="--server: threads per worker")
    p.add_argument(
        "--serve-args", default="", help="--server: more `torchformer serve` options, one string"
    )
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds of load")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--concurrency-limit", type=int, default=64, help="most requests in flight")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a request fails")
    p.add_argument("--warmup", type=int, default=4, help="requests sent before, not counted")
    p.add_argument("--texts-file", help="CSV, TSV, JSONL or JSON (default: IMDB test reviews)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--n-texts", type=int, default=256, help="texts in the sample, sent in turn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key-env", metavar="NAME", help="send the key in this variable")
    p.add_argument("--out", type=Path, help="write the report as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """``torchformer bench serve``: print a summary, optionally write the JSON report."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.url is None) == (args.server is None):
        parser.error("give the server's URL or --server RUN (one of them)")
    headers = {}
    if args.api_key_env:
        if not os.environ.get(args.api_key_env):
            parser.error(f"--api-key-env {args.api_key_env}: that variable is unset or empty")
        headers["X-API-Key"] = os.environ[args.api_key_env]
    try:
        texts, source = load_texts(
            args.texts_file, n=args.n_texts, seed=args.seed, text_column=args.text_column
        )
        with contextlib.ExitStack() as stack:
            url = args.url or stack.enter_context(serving(args.server, _serve_args(args)))
            served = _what_is_served(url, headers)
            report = run_load(
                url,
                texts,
                rate=args.rate,
                duration_s=args.duration,
                texts_per_request=args.texts_per_request,
                concurrency_limit=args.concurrency_limit,
                timeout_s=args.timeout,
                headers=headers,
                warmup_requests=args.warmup,
            )
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report["texts"] = {"source": source, "n": len(texts)}
    report["served"] = served  # which model file / weight dtype answered (auto may pick int8, bf16)
    if args.server:
        report["server"] = {
            "run": str(args.server),
            "workers": args.workers,
            "threads": args.threads,
        }
    print(format_summary(report))
    if args.out is not None:
        from torchformer.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _serve_args(args: argparse.Namespace) -> list[str]:
    extra = ["--workers", str(args.workers), *shlex.split(args.serve_args)]
    if args.threads is not None:
        extra += ["--threads", str(args.threads)]
    if args.api_key_env:
        extra += ["--api-key-env", args.api_key_env]
    return extra


def format_summary(report: dict[str, Any]) -> str:
    lat = {k: "-" if v is None else f"{v:.1f}" for k, v in report["latency_ms"].items()}
    return (
        f"{report['requests']} requests at {report['rate']:g}/s for {report['duration_s']:g} s "
        f"({report['texts_per_request']} text(s) each): {report['ok']} ok, "
        f"{report['errors']} errors {report['errors_by_kind'] or ''}\n"
        f"throughput {report['throughput_requests_per_s']:.1f} requests/s, "
        f"{report['throughput_texts_per_s']:.1f} texts/s\n"
        f"latency ms  p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}\n"
        f"late starts {report['late_starts']} (max lag {report['max_start_lag_ms']:.1f} ms), "
        f"waited for a connection {report['waited_for_connection']}"
    )
