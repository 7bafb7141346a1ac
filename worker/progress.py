"""When the watcher reads the sequencer's report of a running ready-layout pod, and what it read.

In the ready layout every container runs from the start and none changes until the end (a
change would make the pod not Ready), so pod status cannot say when the first executor starts.
The sequencer's report can. The watcher reads it, rate-limited, only while the task pod is Ready
and the task INITIALIZING (every ``initializing_seconds``), or RUNNING (every
``running_seconds``; 0: not again until the pod ends). Nothing here is kept that a restarted
watcher cannot read again: the first reconcile of a task reads its log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.models import State
from worker import podlayout
from worker.report import Report, read_report
from worker.states import Objects, condition

_ACTIVE = (State.QUEUED, State.INITIALIZING, State.RUNNING)


@dataclass
class _Entry:
    pod: str
    read_at: float
    interval: float
    report: Report


class Progress:
    """The last report read of each task whose ready-layout pod runs, and when to read again."""

    def __init__(
        self,
        read: Callable[[str, str], str],
        clock: Callable[[], float],
        initializing_seconds: float = 5.0,
        running_seconds: float = 60.0,
    ) -> None:
        """Read a pod's sequencer log with ``read(task_id, pod)``, timed by ``clock``."""
        self.read, self.clock = read, clock
        self.initializing_seconds, self.running_seconds = initializing_seconds, running_seconds
        self.entries: dict[str, _Entry] = {}

    def report(self, task_id: str, state: State, objects: Objects) -> Report | None:
        """Return what the task's sequencer reported so far, reading it again when due."""
        pod = objects.pod
        name = str(((pod or {}).get("metadata") or {}).get("name") or "")
        phase = ((pod or {}).get("status") or {}).get("phase")
        ready = (condition(pod, "Ready") or {}).get("status") == "True"
        if state not in _ACTIVE or not podlayout.ready(pod):
            self.forget(task_id)
            return None
        entry = self.entries.get(task_id)
        if entry is not None and entry.pod != name:
            entry = None  # a new pod: what the old one said is of another attempt
        if not ready or phase in ("Succeeded", "Failed"):
            # Not running (yet, or any more): nothing is due until it runs (a read left due
            # would have the watcher's loop spin); the final read at the pod's end is its own.
            if entry is None:
                self.forget(task_id)
                return None
            entry.interval = 0.0
            return entry.report
        initializing = state is not State.RUNNING  # (QUEUED: admitted a moment ago)
        interval = self.initializing_seconds if initializing else self.running_seconds
        now = self.clock()
        if entry is None or (interval > 0 and now - entry.read_at >= interval):
            entry = _Entry(name, now, interval, read_report(self.read(task_id, name)))
        entry.interval = interval
        self.entries[task_id] = entry
        return entry.report

    def due(self) -> list[str]:
        """Return the tasks whose report should be read again now."""
        now = self.clock()
        return [
            task_id
            for task_id, entry in self.entries.items()
            if entry.interval > 0 and now - entry.read_at >= entry.interval
        ]

    def wait(self, longest: float) -> float:
        """Return how long the watcher may wait for events before a read is due."""
        now = self.clock()
        waits = [e.read_at + e.interval - now for e in self.entries.values() if e.interval > 0]
        return max(0.0, min([longest, *waits]))

    def forget(self, task_id: str) -> None:
        """Drop what was read of a task."""
        self.entries.pop(task_id, None)
