"""Dynamic batching: which requests share a batch, and what a failed batch does."""

import asyncio
import logging
import threading
import time

import pytest

from gpt_classifier.deploy.batching import Batcher, BatchFailed


class Recorder:
    """A batch function that records each batch, doubles every item, and fails on "boom"."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.seconds = seconds

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        if "boom" in items:
            raise ValueError("boom")
        return [item * 2 for item in items]


async def serve(batcher: Batcher, requests: list[list], gap: float = 0.0) -> list:
    """Submit `requests` (one task each, `gap` seconds apart) while `batcher.run` answers them."""
    runner = asyncio.create_task(batcher.run())
    tasks = []
    for items in requests:
        tasks.append(asyncio.create_task(batcher.submit(items)))
        await asyncio.sleep(gap)
    try:
        # bounded: a batcher that died (e.g. of 3.10's asyncio.TimeoutError) fails the test, not hangs it
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
    finally:
        runner.cancel()


def test_requests_that_wait_together_share_a_batch_in_order():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=4, max_wait_ms=200)
    results = asyncio.run(serve(batcher, [[1, 2, 3], [4, 5, 6], [7], [8, 9]]))
    assert results == [[2, 4, 6], [8, 10, 12], [14], [16, 18]]
    # [4, 5, 6] would make the first batch 6 > 4: it starts the next batch, which [7] fills to 4
    assert recorder.batches == [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batcher.stats.as_dict() == {
        "requests": 4,
        "items": 9,
        "batches": 3,
        "largest_batch": 4,
        "batch_sizes": {"2": 1, "3": 1, "4": 1},
    }


def test_a_request_larger_than_the_batch_size_is_a_batch_of_its_own():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=4, max_wait_ms=200)
    results = asyncio.run(serve(batcher, [[1], list(range(10)), [2]]))
    assert results[1] == [2 * i for i in range(10)]
    assert recorder.batches == [[1], list(range(10)), [2]]
    assert batcher.stats.as_dict()["batch_sizes"] == {"1": 2, "10": 1}  # two batches of one item


def test_a_full_batch_runs_without_waiting():
    """A request that fills the batch is answered at once, not after `max_wait_ms` (5 s here)."""
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=2, max_wait_ms=5000)
    started = time.perf_counter()
    assert asyncio.run(serve(batcher, [["a", "b"]])) == [["aa", "bb"]]
    assert time.perf_counter() - started < 2.5


def test_the_wait_is_bounded():
    """A lone request is answered after about `max_wait_ms`, not when the batch is full."""
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=64, max_wait_ms=50)
    started = time.perf_counter()
    assert asyncio.run(serve(batcher, [["a"]])) == [["aa"]]
    assert 0.04 < time.perf_counter() - started < 5
    assert recorder.batches == [["a"]]


def test_requests_arriving_during_a_batch_form_the_next_one():
    """No wait at all (max_wait_ms=0): batches still form from what queued during the last call. The
    first call is held until the others have queued (an event, not a race of sleeps)."""
    release = threading.Event()
    recorder = Recorder()

    def held(items: list) -> list:
        if not recorder.batches:
            release.wait(timeout=30)
        return recorder(items)

    async def scenario() -> list:
        batcher = Batcher(held, max_batch_size=64, max_wait_ms=0)
        runner = asyncio.create_task(batcher.run())
        first = asyncio.create_task(batcher.submit([0]))
        while batcher.stats.batches == 0:  # the first batch is formed: the call has begun
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(batcher.submit([i])) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # they queue while the first call is held
        release.set()
        try:
            return await asyncio.gather(first, *rest)
        finally:
            runner.cancel()

    assert asyncio.run(scenario()) == [[2 * i] for i in range(6)]
    assert recorder.batches == [[0], [1, 2, 3, 4, 5]]
    assert "MainThread" not in recorder.threads  # the event loop never runs the model


def test_a_failed_batch_fails_its_requests_only():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=2, max_wait_ms=100)
    results = asyncio.run(serve(batcher, [["a"], ["boom"], ["b"], ["c"]]))
    assert [str(result) for result in results[:2]] == ["ValueError: boom"] * 2
    assert all(isinstance(result, BatchFailed) for result in results[:2])
    assert results[2:] == [["bb"], ["cc"]]


@pytest.mark.parametrize("max_wait_ms", [0, 20])
def test_every_request_is_answered_once_under_load(max_wait_ms):
    recorder = Recorder(seconds=0.002)
    batcher = Batcher(recorder, max_batch_size=8, max_wait_ms=max_wait_ms)
    requests = [[i] * (1 + i % 3) for i in range(200)]
    results = asyncio.run(serve(batcher, requests))
    assert results == [[2 * i] * (1 + i % 3) for i in range(200)]
    assert sum(len(batch) for batch in recorder.batches) == sum(len(r) for r in requests)
    assert all(len(batch) <= 8 for batch in recorder.batches)


class Panic(BaseException):
    """Like tiktoken's `PanicException`: a BaseException, not an Exception."""


def test_a_batch_raising_a_base_exception_fails_its_requests_only():
    def run_batch(items: list) -> list:
        if "panic" in items:
            raise Panic("called `Result::unwrap()` on an `Err` value")
        return [item * 2 for item in items]

    async def scenario() -> tuple[list, list, bool]:
        batcher = Batcher(run_batch, max_batch_size=1, max_wait_ms=0)
        runner = asyncio.create_task(batcher.run())
        first = await asyncio.gather(batcher.submit(["panic"]), return_exceptions=True)
        later = await asyncio.wait_for(batcher.submit(["a"]), timeout=5)
        alive = not runner.done()
        runner.cancel()
        return first, later, alive

    first, later, alive = asyncio.run(scenario())
    assert isinstance(first[0], BatchFailed) and "Panic: called `Result::unwrap()`" in str(first[0])
    assert later == ["aa"] and alive


def test_requests_whose_clients_have_gone_are_not_computed():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=8, max_wait_ms=100)

    async def scenario() -> list:
        runner = asyncio.create_task(batcher.run())
        kept = asyncio.create_task(batcher.submit(["kept"]))
        gone = asyncio.create_task(batcher.submit(["gone"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # what the server does when a client disconnects
        result = await kept
        runner.cancel()
        return result

    assert asyncio.run(scenario()) == ["keptkept"]
    assert recorder.batches == [["kept"]]
    assert batcher.waiting_items == 0


def test_waiting_items_count_what_is_queued():
    async def scenario() -> int:
        batcher = Batcher(Recorder(), max_batch_size=8, max_wait_ms=0)
        waiting = [asyncio.create_task(batcher.submit(items)) for items in (["a"], ["b", "c"])]
        await asyncio.sleep(0)
        for task in waiting:
            task.cancel()
        return batcher.waiting_items

    assert asyncio.run(scenario()) == 3


def test_no_batch_yet():
    stats = Batcher(Recorder(), max_batch_size=4, max_wait_ms=10).stats.as_dict()
    assert stats == {"requests": 0, "items": 0, "batches": 0, "largest_batch": 0, "batch_sizes": {}}


def test_a_failed_batch_is_logged_once(caplog):
    batcher = Batcher(Recorder(), max_batch_size=2, max_wait_ms=0)
    with caplog.at_level(logging.ERROR, logger="gpt_classifier.deploy.batching"):
        results = asyncio.run(serve(batcher, [["boom"]]))
    assert isinstance(results[0], BatchFailed) and str(results[0]) == "ValueError: boom"
    assert caplog.messages == ["a batch of 1 items failed: ValueError: boom"]


def test_a_request_whose_client_left_does_not_stop_the_others():
    """The first request is cancelled while its batch runs: the batcher answers the next ones."""
    release = threading.Event()
    recorder = Recorder()

    def held(items: list) -> list:
        if not recorder.batches:
            release.wait(timeout=30)
        return recorder(items)

    async def scenario() -> list:
        batcher = Batcher(held, max_batch_size=4, max_wait_ms=0)
        runner = asyncio.create_task(batcher.run())
        gone = asyncio.create_task(batcher.submit(["gone"]))
        while batcher.stats.batches == 0:
            await asyncio.sleep(0.001)
        gone.cancel()
        release.set()
        try:
            answers = asyncio.gather(batcher.submit(["a"]), batcher.submit(["b", "c"]))
            return await asyncio.wait_for(answers, timeout=30)  # a dead batcher answers nothing
        finally:
            runner.cancel()

    assert asyncio.run(scenario()) == [["aa"], ["bb", "cc"]]
    assert recorder.batches == [["gone"], ["a", "b", "c"]]
