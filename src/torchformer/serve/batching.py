"""Micro-batching: group concurrent requests into one model call.

A transformer on a CPU does far more work per second on a batch of 16 texts
than on 16 single texts, so the server does not run each request alone. Each
request's texts wait in a bounded queue; one loop takes the oldest request and
keeps collecting until the batch holds ``max_batch_size`` texts or the oldest
request has waited ``max_wait_ms``, then runs the model in a worker thread
(the event loop stays free to accept and reject requests meanwhile) and hands
each request its own slice of the results. When a merged batch fails, each of its
requests is run again alone, so that a bad request fails by itself and its error names
only its own texts.

Length grouping (when the batcher is given ``text_lengths``): a collected batch is not
one model call. Its texts are sorted by length (tokens, for a classifier) and packed into
sub-batches of at most ``max_batch_size`` texts and ``max_batch_tokens`` padded tokens
(texts × the longest), one model call each, shortest first; so short texts no longer pay
for the padding of a long one, and a request whose texts are all done is answered at once,
without waiting for the longer sub-batches. Each text's answer goes back to its request,
in the request's order. A model pads each call to its own longest text and masks the
padding, so a text's answer does not depend on its neighbours (up to float rounding).

Requests are collected whole: one larger than ``max_batch_size`` forms its own
batch (without length grouping, one call: the predictor chunks it). The queue bound is in
texts; a request that would overflow it is refused at once (``QueueFullError``) rather than
left to grow memory and latency without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MicroBatcher", "QueueFullError"]


class QueueFullError(RuntimeError):
    """The bounded queue cannot take this request now."""


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Collects concurrent ``submit`` calls into batches for ``predict_batch``.

    Args:
        predict_batch: texts -> one result per text, in order (runs in a worker thread).
        max_batch_size: most texts per model call (a single larger request is collected
            alone: one call without ``text_lengths``, split into sub-batches with it).
        max_wait_ms: longest the oldest waiting request is held back to fill a batch.
        max_queue: most texts waiting (not yet running) before requests are refused.
        on_batch: called on the event loop with the size of each model call.
        text_lengths: texts -> the length of each (runs in the worker thread); when given,
            a batch runs as length-sorted sub-batches (see the module docstring).
        max_batch_tokens: with ``text_lengths``, most padded tokens (texts × longest) per
            model call; a text longer than this runs alone.
    """

    def __init__(
        self,
        predict_batch: Callable[[list[str]], Sequence[Any]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
        text_lengths: Callable[[list[Any]], Sequence[int]] | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1 or None, got {max_batch_tokens}")
        self.predict_batch = predict_batch
        self.text_lengths = text_lengths
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._queued_texts = 0
        self._arrival: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchformer-infer")

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a batch (not counting the batch running now)."""
        return self._queued_texts

    @property
    def healthy(self) -> bool:
        """False once the batching loop has died (it should never)."""
        return self._task is None or not self._task.done()

    async def submit(self, texts: list[str]) -> list[Any]:
        """Queue ``texts`` and wait for their results.

        Raises:
            QueueFullError: the queue holds too many texts to take these.
            Exception: whatever ``predict_batch`` raised for these texts run alone.
        """
        if self._queued_texts + len(texts) > self.max_queue:
            raise QueueFullError(
                f"queue full: {self._queued_texts} texts waiting, limit {self.max_queue}; retry later"
            )
        self._ensure_started()
        item = _Pending(list(texts), asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._queued_texts += len(item.texts)
        self._arrival.set()
        return await item.future

    def _ensure_started(self) -> None:
        # Started lazily, on the serving loop, so the batcher works with or without lifespan events.
        if self._task is None:
            self._arrival = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._arrival.clear()
                await self._arrival.wait()
            await self._fill()
            await self._execute(self._take())

    async def _fill(self) -> None:
        """Wait until a full batch is queued or the oldest request's wait is over."""
        deadline = self._pending[0].arrived + self.max_wait
        while self._queued_texts < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        """Pop whole requests, oldest first, up to ``max_batch_size`` texts (at least one)."""
        batch, size = [], 0
        while self._pending:
            nxt = len(self._pending[0].texts)
            if batch and size + nxt > self.max_batch_size:
                break
            item = self._pending.popleft()
            self._queued_texts -= nxt
            size += nxt
            if not item.future.done():  # the client may have gone away
                batch.append(item)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        try:
            if self.text_lengths is None:
                await self._run_whole(batch)
            else:
                await self._run_by_length(batch)
        except Exception as error:
            if len(batch) == 1 and self.text_lengths is None:
                if not batch[0].future.done():  # the client may have gone away
                    batch[0].future.set_exception(error)
                return
            # One bad request must not fail the others, nor show them its text: run each
            # request not yet answered alone, in one call in its own order, so each gets its
            # own result or its own error (whose index and quoted text, if any, are its own).
            for item in batch:
                if not item.future.done():
                    await self._run_alone(item)

    async def _run_whole(self, batch: list[_Pending]) -> None:
        """All the batch's texts in one call, in arrival order."""
        results = await self._predict([t for item in batch for t in item.texts])
        start = 0
        for item in batch:
            end = start + len(item.texts)
            if not item.future.done():
                item.future.set_result(list(results[start:end]))
            start = end

    async def _run_by_length(self, batch: list[_Pending]) -> None:
        """The batch's texts sorted by length, in sub-batches within the size and token
        caps; each request is answered as soon as its last text is done."""
        from torchformer.data.batching import pack_by_tokens  # imports torch: only when used

        texts = [t for item in batch for t in item.texts]
        owner = [k for k, item in enumerate(batch) for _ in item.texts]  # text -> its request
        loop = asyncio.get_running_loop()
        lengths = await loop.run_in_executor(self._executor, self.text_lengths, texts)
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # stable: ties keep order
        sub_batches = pack_by_tokens(
            order, lengths, max_tokens=self.max_batch_tokens, max_batch_size=self.max_batch_size
        )
        results: list[Any] = [None] * len(texts)
        left = [len(item.texts) for item in batch]
        starts = [0]
        for item in batch:
            starts.append(starts[-1] + len(item.texts))
        for indices in sub_batches:
            for i, result in zip(indices, await self._predict([texts[i] for i in indices])):
                results[i] = result
                k = owner[i]
                left[k] -= 1
                if left[k] == 0 and not batch[k].future.done():
                    batch[k].future.set_result(results[starts[k] : starts[k + 1]])

    async def _run_alone(self, item: _Pending) -> None:
        """One request's texts in one call, in its own order: its result or its error."""
        try:
            results = await self._predict(item.texts)
        except Exception as error:
            if not item.future.done():
                item.future.set_exception(error)
            return
        if not item.future.done():
            item.future.set_result(list(results))

    async def _predict(self, texts: list[str]) -> Sequence[Any]:
        """One model call, in the worker thread."""
        if self.on_batch is not None:
            self.on_batch(len(texts))
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self.predict_batch, texts)
        if len(results) != len(texts):
            raise RuntimeError(f"predictor returned {len(results)} results for {len(texts)} texts")
        return results

    async def close(self) -> None:
        """Stop the loop; waiting requests get a ``QueueFullError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(QueueFullError("server shutting down"))
        self._queued_texts = 0
        self._executor.shutdown(wait=False)
