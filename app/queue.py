"""Work to do, on RQ over Redis: the API enqueues, `kueue-tes worker` runs (design section 6).

The only module that imports ``rq``. With no ``KUEUE_TES_REDIS_URL`` the queue lives in an
embedded, in-process Redis-compatible server (fakeredis) that the API and the worker thread of
``kueue-tes serve`` share.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import fakeredis
import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.timeouts import TimerDeathPenalty

from app.settings import Settings

log = logging.getLogger(__name__)

SUBMIT = "worker.jobs.submit"
CANCEL = "worker.jobs.cancel"


class QueueError(Exception):
    """The queue could not take the work (Redis unreachable, say)."""


def connect(settings: Settings) -> redis.Redis:
    """Return a Redis connection: the configured server, or a new embedded one."""
    if settings.redis_url:
        return redis.Redis.from_url(settings.redis_url)
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def job_id(kind: str, task_id: str) -> str:
    """Return the RQ job id for ``kind`` ("submit" or "cancel") of a task."""
    return f"{kind}-{task_id}"


class TaskQueue:
    """Enqueue submit and cancel jobs for tasks; ids derive from task ids."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        """Bind the submit and cancel RQ queues to ``connection``."""
        self.connection = connection
        self.submits = Queue(settings.rq_queue, connection=connection)
        self.cancels = Queue(settings.rq_cancel_queue, connection=connection)

    def _enqueue(self, queue: Queue, func: str, kind: str, *task_ids: str) -> None:
        first, more = task_ids[0], len(task_ids) - 1
        # A group's id names its first task and its size, so that it never replaces the job
        # of one task (nor one task's job a group's).
        name = job_id(kind, first) + (f"-group-{len(task_ids)}" if more else "")
        what = f"task {first}" + (f" and {more} more" if more else "")
        try:
            queue.enqueue(
                func,
                *task_ids,
                job_id=name,
                result_ttl=3600,
                failure_ttl=7 * 24 * 3600,
                description=f"{kind} {' '.join(task_ids)}",
            )
        except redis.RedisError as exc:
            raise QueueError(f"cannot enqueue {kind} of {what}: {exc}") from exc

    def submit(self, task_id: str) -> None:
        """Enqueue the submission of a stored task."""
        self._enqueue(self.submits, SUBMIT, "submit", task_id)

    def submit_many(self, task_ids: Sequence[str]) -> None:
        """Enqueue the submission of stored tasks as one job (a worker submits them in turn)."""
        if task_ids:
            self._enqueue(self.submits, SUBMIT, "submit", *task_ids)

    def cancel(self, task_id: str) -> None:
        """Enqueue the cancellation of a task, ahead of submissions."""
        self._enqueue(self.cancels, CANCEL, "cancel", task_id)

    def job_status(self, kind: str, task_id: str) -> str | None:
        """Return the RQ status of a task's job, or None if there is none."""
        try:
            job = Job.fetch(job_id(kind, task_id), connection=self.connection)
        except Exception:  # rq raises NoSuchJobError, redis errors pass through
            return None
        status = job.get_status(refresh=False)
        return None if status is None else str(status.value)


class _Worker(SimpleWorker):
    """RQ's SimpleWorker, with a command listener that wakes every second.

    RQ's listener waits up to 60 s for a message, and redis-py (8.x) joins it when the worker
    stops, so a worker stopped before its subscription was confirmed (a short burst, a quick
    shutdown) took a minute to stop.
    """

    def subscribe(self) -> None:
        """Subscribe to this worker's command channel."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        thread: Any = self.pubsub.run_in_thread(
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )
        self.pubsub_thread = thread


class _ThreadWorker(_Worker):
    """An RQ worker that runs jobs in the calling thread (for `kueue-tes serve`)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        # Signals belong to the main thread (uvicorn's); this worker stops via stop_event.
        return None


def _queues(settings: Settings, connection: redis.Redis) -> list[Queue]:
    # Cancels first: RQ drains queues in the order given.
    return [
        Queue(settings.rq_cancel_queue, connection=connection),
        Queue(settings.rq_queue, connection=connection),
    ]


def run_worker(settings: Settings, connection: redis.Redis, burst: bool = False) -> None:
    """Run an RQ worker until stopped.

    Jobs run in the worker process itself: each is a few API calls, cheaper than a fork.
    """
    worker = _Worker(_queues(settings, connection), connection=connection)
    worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)


def start_thread_worker(settings: Settings, connection: redis.Redis) -> threading.Thread:
    """Start an in-process worker thread (a daemon: it ends with the process)."""
    worker = _ThreadWorker(_queues(settings, connection), connection=connection)

    def loop() -> None:
        while True:
            try:
                worker.work(logging_level="WARNING", with_scheduler=False)
            except Exception:
                log.exception("embedded queue worker failed; restarting it")
            time.sleep(1)

    thread = threading.Thread(target=loop, name="kueue-tes-worker", daemon=True)
    thread.start()
    return thread
