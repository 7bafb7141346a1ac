"""What the watcher and the worker tell Prometheus: admissions, ends, evictions, submissions.

The watcher calls an :class:`Observer` at the few points where a task's life changes; the
observer turns the stored task's timestamps into durations and labels (app/metrics.py). Each
call happens once per change because the watcher calls it only where it stores that change.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from app import metrics
from app.models import State
from app.store.base import TaskRecord

Json = dict[str, Any]


def epoch(stamp: object) -> float | None:
    """Return an RFC 3339 time as epoch seconds, or None if it is not one."""
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Observer:
    """Records the watcher's news in this process's metrics."""

    def __init__(self) -> None:
        """Register the watcher lag of this process."""
        self.lag = metrics.watcher_lag()

    def applied(self) -> None:
        """An observation was applied, or the watch found none pending: the watcher is current."""
        self.lag.applied()

    def admitted(self, record: TaskRecord, index: int, at: str | None) -> None:
        """Attempt ``index`` of the task was admitted at ``at`` (None: it was not): observe
        how long it waited."""
        if at is None:
            return
        logs: list[Json] = record.doc.get("logs") or []
        # The first admission waited since creation; a later one since the eviction before it.
        since = logs[index - 1].get("end_time") if 0 < index <= len(logs) else None
        start, end = epoch(since or record.doc.get("creation_time")), epoch(at)
        if start is not None and end is not None:
            metrics.QUEUE_WAIT.labels(record.queue).observe(max(0.0, end - start))

    def finished(self, record: TaskRecord, attempt: Json, final: State) -> None:
        """The task ended in ``final``: observe its last attempt's run from its admission to its
        end (or now)."""
        end = epoch(attempt["end_time"]) if attempt.get("end_time") else time.time()
        start = epoch(attempt.get("start_time"))
        if start is not None and end is not None:  # never admitted: it did not run
            metrics.RUN_TIME.labels(record.queue, final.value).observe(max(0.0, end - start))

    def evicted(self, record: TaskRecord, reason: str | None) -> None:
        """The task's attempt ended by an eviction; it waits to be admitted again."""
        metrics.EVICTIONS.labels(record.queue, metrics.eviction_reason(reason)).inc()


def submitted(queue: str) -> None:
    """The worker created a task's Job in ``queue``."""
    metrics.SUBMISSIONS.labels(queue).inc()


def submission_failed(reason: str) -> None:
    """A submission failed for one of :data:`app.metrics.SUBMISSION_FAILURES`."""
    metrics.SUBMISSION_FAILED.labels(reason).inc()
