"""What the watcher knows of a task, and what it decides about it (pure; design section 11).

:class:`Objects` holds what the cluster last showed of a task, :class:`Timing` the clock and
graces of the waits the watcher times, :class:`Decision` what ``worker.states.decide`` makes of
them. The readers of object fields below serve both sides of that decision: Kueue's
(worker/states.py) and the task pod's (worker/podstates.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.models import State
from worker.report import Report

Json = dict[str, Any]


@dataclass(frozen=True)
class Objects:
    """What the cluster last showed of one task; None where an object does not exist."""

    job: Json | None = None
    pod: Json | None = None
    workload: Json | None = None
    events: tuple[Json, ...] = ()  # Warning Events about the Job, where the cluster gives them
    report: Report | None = None  # the sequencer's report so far (ready layout, worker.progress)
    #: Every live pod of the task by uid; ``pod`` is the current attempt's (worker/pods.py).
    pods: Mapping[str, Json] = field(default_factory=dict)

    @property
    def gone(self) -> bool:
        """Nothing of the task exists any more."""
        return self.job is None and self.pod is None and not self.pods


@dataclass(frozen=True)
class Timing:
    """The time now (epoch seconds), when each of the waits began, and the graces."""

    now: float = 0.0
    since: Mapping[str, float] = field(default_factory=dict)
    image_pull_grace: float = 300.0
    no_workload_grace: float = 60.0
    pod_create_grace: float = 600.0

    def waited(self, key: str, start: float | None = None) -> float:
        """Return how long the wait ``key`` has lasted (from ``start`` where it is known)."""
        return self.now - (start if start is not None else self.since.get(key, self.now))


@dataclass
class Decision:
    """What the watcher should do: move the task, note why, end the attempt."""

    state: State | None = None
    system_logs: list[str] = field(default_factory=list)
    executor_logs: list[Json] | None = None
    finished: bool = False
    requeued: bool = False
    trust_report: bool = False  # the pod ran to its end: the sequencer's verdict decides


def condition(obj: Json | None, kind: str) -> Json | None:
    """Return an object's status condition of type ``kind``, or None."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return None


def is_true(obj: Json | None, kind: str) -> bool:
    """Tell whether an object's condition ``kind`` is True."""
    cond = condition(obj, kind)
    return bool(cond and cond.get("status") == "True")


def meta(obj: Json | None) -> Json:
    """Return an object's metadata ({} where it has none)."""
    return dict((obj or {}).get("metadata") or {})


def why(cond: Json, default: str = "") -> str:
    """Return "reason: message" of a condition or state (the reason alone without a message)."""
    reason, message = cond.get("reason") or default, cond.get("message")
    return f"{reason}: {message}" if message else str(reason)


def epoch(stamp: object) -> float | None:
    """Return an RFC 3339 time as epoch seconds, or None."""
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
