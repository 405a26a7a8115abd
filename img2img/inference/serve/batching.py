"""Micro-batching: requests that can run together are collected for a bounded time, then run as
one batch in the model's own worker thread, off the event loop.

Each model has one `MicroBatcher` with one worker thread, so batches of one model run one after
another and never fight over the cores; the event loop only collects requests and hands back
results. While a batch runs, new requests queue up and form the next batch, so under load batches
fill without waiting; with a single request in flight it waits at most `max_wait` seconds.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """The model already holds `queue_size` requests; `retry_after` estimates when to try again (s)."""

    def __init__(self, retry_after: int):
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class BatchResult:
    """One request's result and how it was run."""

    value: Any
    batch_size: int
    queued_s: float
    compute_s: float


@dataclass
class _Job:
    key: Hashable  # what `run` is called with
    group: Hashable  # jobs of one group run together: the key, or a group of its own
    item: Any
    cost: int
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """Collects jobs by key and runs up to `max_batch` of one key (and at most `max_cost` together,
    e.g. pixels) as one call of `run(key, items) -> results` in a single worker thread.

    `admit()` reserves a place once the request's body has been received (a slow upload never holds
    one); more than `queue_size` admitted requests raise `QueueFull`, so a flood is answered at once
    instead of piling up in memory.
    """

    def __init__(self, run: Callable[[Hashable, list[Any]], Sequence[Any]], *, max_batch: int = 8,
                 max_wait: float = 0.005, queue_size: int = 64, max_cost: int | None = None, name: str = "model"):
        if max_batch < 1 or queue_size < 1 or max_wait < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait >= 0")
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.queue_size = queue_size
        self.max_cost = max_cost
        self.name = name
        self.admitted = 0
        self.batches = 0
        self.seconds_per_batch = 0.0  # moving average, for Retry-After
        self._pending: dict[Hashable, deque[_Job]] = {}
        self._running: list[_Job] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"img2img-serve-{name}")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # -- admission ------------------------------------------------------------------------------

    def admit(self) -> None:
        if self.admitted >= self.queue_size:
            raise QueueFull(self.retry_after())
        self.admitted += 1

    def release(self) -> None:
        self.admitted = max(0, self.admitted - 1)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch's worth."""
        batches_ahead = max(1, math.ceil(self.admitted / self.max_batch))
        return max(1, math.ceil(batches_ahead * self.seconds_per_batch))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"img2img-batcher-{self.name}")

    async def close(self) -> None:
        """Stop collecting and cancel what still waits; the worker thread finishes its batch first.

        The server closes its batchers only after the requests in flight have been answered.
        """
        running = list(self._running)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in [*running, *(j for jobs in self._pending.values() for j in jobs)]:
            if not job.future.done():
                job.future.cancel()
        self._pending.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # -- work -----------------------------------------------------------------------------------

    async def submit(self, key: Hashable, item: Any, *, cost: int = 1, alone: bool = False) -> BatchResult:
        """Queue `item` under `key` and wait for its result. `alone` runs it in a batch of its own."""
        if self._task is None or self._wakeup is None:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        job = _Job(key=key, group=(key, object()) if alone else key, item=item, cost=cost,
                   future=loop.create_future(), arrived=loop.time())
        self._pending.setdefault(job.group, deque()).append(job)
        self._wakeup.set()
        return await job.future

    def _limit_reached(self, jobs: deque[_Job]) -> bool:
        if len(jobs) >= self.max_batch:
            return True
        return self.max_cost is not None and sum(j.cost for j in jobs) >= self.max_cost

    def _take(self, jobs: deque[_Job]) -> list[_Job]:
        taken: list[_Job] = []
        cost = 0
        while jobs and len(taken) < self.max_batch:
            job = jobs[0]
            if taken and self.max_cost is not None and cost + job.cost > self.max_cost:
                break
            jobs.popleft()
            if job.future.done():  # the client went away
                continue
            taken.append(job)
            cost += job.cost
        return taken

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            group = min(self._pending, key=lambda g: self._pending[g][0].arrived)
            jobs = self._pending[group]
            deadline = jobs[0].arrived + self.max_wait
            while not self._limit_reached(jobs) and loop.time() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())
                except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                    break
            batch = self._take(jobs)
            if not jobs:
                del self._pending[group]
            if batch:
                await self._run_batch(loop, batch[0].key, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, key: Hashable, batch: list[_Job]) -> None:
        started = loop.time()
        clock = time.perf_counter()
        self._running = batch
        try:
            results = await loop.run_in_executor(self._executor, self.run, key, [j.item for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # each waiting request gets the error; the loop goes on
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._running = []
            seconds = time.perf_counter() - clock
            self.batches += 1
            self.seconds_per_batch = seconds if self.batches == 1 else 0.8 * self.seconds_per_batch + 0.2 * seconds
        for job, value in zip(batch, results):
            if not job.future.done():
                job.future.set_result(BatchResult(value=value, batch_size=len(batch),
                                                  queued_s=started - job.arrived, compute_s=seconds))
