"""Group commit for CreateTask: new tasks are stored in groups, then enqueued in groups.

Two stages, each a thread that takes everything waiting for it at once:

* the writer stores the tasks that arrived while it was busy in one transaction
  (``create_many``: one write lock and one commit for the group), answers their requests,
  and hands the stored ids to
* the enqueuer, which enqueues the ids waiting for it as one RQ job per group of up to
  ``max_group`` (one Redis transaction instead of one each), after waiting a moment
  (``ENQUEUE_LINGER_SECONDS``) for a group to fill: a worker submits a group of tasks for
  the RQ bookkeeping of one job.

A request is answered once its task is committed: a 200 means that the task is stored, and it
will be submitted, by its RQ job a moment later or, if this process dies before enqueueing
it or Redis refuses it, by the watcher's sweep, which enqueues QUEUED tasks that have no Job
after ``KUEUE_TES_RESUBMIT_GRACE_SECONDS``. Redis is off the request's path: its hiccups
delay a submission, never an answer. Nothing waits to fill a group: one request alone is
written at once. A stage's thread ends when idle and the next item starts a new one.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.queue import TaskQueue
from app.store.base import StoreError, TaskRecord, TaskStore

log = logging.getLogger(__name__)

#: The most tasks in one transaction, and in one RQ job.
MAX_GROUP = 64
#: A stage's thread ends after this many idle seconds; the next item starts a new one.
IDLE_SECONDS = 5.0
#: How long the enqueuer waits for a group to fill. Answers never wait for it; a burst's
#: submissions travel in fewer, larger RQ jobs, which is what a worker's rate depends on.
ENQUEUE_LINGER_SECONDS = 0.01

Settle = Callable[[BaseException | None], None]
T = TypeVar("T")


@dataclass(frozen=True)
class _Item:
    record: TaskRecord
    settle: Settle


class _Stage(Generic[T]):
    """A thread that hands whatever is waiting, up to ``most`` items, to ``handle`` at once.

    With ``linger`` it waits that long for a group to fill before handling it.
    """

    def __init__(
        self, name: str, handle: Callable[[list[T]], None], most: int, linger: float = 0.0
    ) -> None:
        self.name, self.handle, self.most, self.linger = name, handle, most, linger
        self._waiting: collections.deque[T] = collections.deque()
        self._ready = threading.Condition()
        self._running = False
        self._handling = 0

    def put(self, *items: T) -> None:
        """Queue ``items`` (together: one group, room permitting); start the thread if needed."""
        with self._ready:
            self._waiting.extend(items)
            if self._running:
                self._ready.notify_all()  # flush() may wait on the same condition
                return
            self._running = True
        threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def wait(self, timeout: float) -> bool:
        """Wait until nothing waits or is being handled; False if ``timeout`` passed first."""
        with self._ready:
            return self._ready.wait_for(lambda: not self._waiting and not self._handling, timeout)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    if not self._ready.wait(IDLE_SECONDS) and not self._waiting:
                        self._running = False
                        return
                until = time.monotonic() + self.linger
                while len(self._waiting) < self.most and (left := until - time.monotonic()) > 0:
                    self._ready.wait(left)
                count = min(len(self._waiting), self.most)
                group = [self._waiting.popleft() for _ in range(count)]
                self._handling = count
            try:
                self.handle(group)
            except Exception:  # a bug: the stage goes on with the next group
                log.exception("%s: handling %d items failed", self.name, len(group))
            finally:
                with self._ready:
                    self._handling = 0
                    self._ready.notify_all()


class Intake:
    """Store new tasks and enqueue their submission, in groups, on threads of its own."""

    def __init__(self, store: TaskStore, queue: TaskQueue, max_group: int = MAX_GROUP) -> None:
        """Write to ``store`` and enqueue on ``queue``, at most ``max_group`` tasks at once."""
        self.store, self.queue = store, queue
        self._writer: _Stage[_Item] = _Stage("kueue-tes-intake", self._write, max_group)
        self._enqueuer: _Stage[str] = _Stage(
            "kueue-tes-enqueue", self._enqueue, max_group, ENQUEUE_LINGER_SECONDS
        )

    async def admit(self, record: TaskRecord) -> None:
        """Store ``record`` with the next group (its submission follows); raise StoreError."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_resolve, done, error)

        self._writer.put(_Item(record, settle))
        await done

    def admit_blocking(self, record: TaskRecord) -> None:
        """Like :meth:`admit`, for a caller on a thread of its own (the spec-driven route)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def settle(error: BaseException | None) -> None:
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        self._writer.put(_Item(record, settle))
        done.result()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every task admitted so far is stored and enqueued; False on timeout."""
        return self._writer.wait(timeout) and self._enqueuer.wait(timeout)

    def _write(self, group: list[_Item]) -> None:
        """Store the group in one transaction; answer its requests; pass the ids on."""
        errors: list[BaseException | None] = [None] * len(group)
        try:
            errors = list(self.store.create_many([item.record for item in group]))
        except StoreError as exc:  # every request of the group hears it
            errors = [exc] * len(group)
        except BaseException as exc:  # a bug: the requests hear it too, then it is logged
            errors = [exc] * len(group)
            raise
        finally:
            stored = [
                item.record.id for item, error in zip(group, errors, strict=True) if not error
            ]
            if stored:
                self._enqueuer.put(*stored)
            for item, error in zip(group, errors, strict=True):
                try:
                    item.settle(error)
                except RuntimeError:  # its event loop has closed (a worker shutting down)
                    log.info("task %s: stored; its request is gone", item.record.id)

    def _enqueue(self, task_ids: list[str]) -> None:
        """Enqueue one submit job for the group."""
        try:
            self.queue.submit_many(task_ids)
        except Exception as exc:  # QueueError, or anything else RQ raises
            # The tasks are stored; the watcher's sweep re-enqueues QUEUED tasks without a Job.
            log.warning("tasks %s: %s; the sweep will submit them later", " ".join(task_ids), exc)


def _resolve(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # the request was cancelled (its client went away)
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
