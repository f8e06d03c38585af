"""Dynamic batching for a server: concurrent requests share one call of a batch function.

Each request's items wait in an asyncio queue. One task takes the first waiting request, gathers
more until `max_batch_size` items or `max_wait_ms` has passed, runs the batch function once in a
worker thread (the event loop keeps reading requests meanwhile) and gives each request its share of
the results. Under load, the requests that arrive during one call form the next batch. Whatever a
batch raises (even a `BaseException` such as a Rust panic) fails that batch's requests only, and a
request cancelled while it waits (its client has gone) is dropped before the batch runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class BatchStats:
    """The batches formed so far: how many, and how many items each held."""

    requests: int = 0
    items: int = 0
    batches: int = 0
    sizes: Counter = field(default_factory=Counter)  # items in a batch -> how many batches

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "items": self.items,
            "batches": self.batches,
            "largest_batch": max(self.sizes, default=0),
            "batch_sizes": {str(size): count for size, count in sorted(self.sizes.items())},
        }


class BatchFailed(RuntimeError):
    """What the requests of a failed batch get: the batch function's error, named in one line."""


class Batcher(Generic[Item, Result]):
    """`await batcher.submit(items)` -> the results of `run_batch` for those items, in order.

    `run_batch(items)` must return one result per item. A request larger than `max_batch_size` is a
    batch of its own; `run` never splits a request, and never blocks the event loop.
    """

    def __init__(
        self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch_size: int, max_wait_ms: float
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self.queue: asyncio.Queue[tuple[list[Item], asyncio.Future]] = asyncio.Queue()
        self.held_over: tuple[list[Item], asyncio.Future] | None = None  # too big for the last batch
        self.waiting_items = 0  # queued, not yet in a batch

    async def submit(self, items: list[Item]) -> list[Result]:
        """The results for `items`; cancelling the caller drops them if their batch has not started."""
        future = asyncio.get_running_loop().create_future()
        self.stats.requests += 1
        self.stats.items += len(items)
        self.waiting_items += len(items)
        await self.queue.put((items, future))
        return await future

    async def gather(self) -> list[tuple[list[Item], asyncio.Future]]:
        """The next batch: the first waiting request, then more until the size or time limit."""
        loop = asyncio.get_running_loop()
        first, self.held_over = self.held_over or await self.queue.get(), None
        batch, size = [first], len(first[0])
        deadline = loop.time() + self.max_wait
        while size < self.max_batch_size:
            if not self.queue.empty():  # those that queued meanwhile join, even when the wait is over
                waiting = self.queue.get_nowait()
            elif (timeout := deadline - loop.time()) <= 0:
                break
            else:
                try:
                    waiting = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    break
            if size + len(waiting[0]) > self.max_batch_size:
                self.held_over = waiting  # it starts the next batch
                break
            batch.append(waiting)
            size += len(waiting[0])
        self.waiting_items -= sum(len(request_items) for request_items, _ in batch)
        return batch

    async def run(self) -> None:
        """Answer batches until cancelled; a failed batch fails its requests only."""
        while True:
            batch = [request for request in await self.gather() if not request[1].done()]
            items = [item for request_items, _ in batch for item in request_items]
            if not items:  # every client of this batch has gone
                continue
            self.stats.batches += 1
            self.stats.sizes[len(items)] += 1
            try:
                results = await asyncio.to_thread(self.run_batch, items)
            except asyncio.CancelledError:
                raise
            except BaseException as err:  # a Rust panic is a BaseException: this task must not die of it
                log.error("a batch of %d items failed: %s: %s", len(items), type(err).__name__, err)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(BatchFailed(f"{type(err).__name__}: {err}"))
                continue
            start = 0
            for request_items, future in batch:
                if not future.done():  # not when its client has gone
                    future.set_result(list(results[start : start + len(request_items)]))
                start += len(request_items)
