"""The task store contract: records, filters, the transition table and the TaskStore protocol."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.models import State, View

#: States a task never leaves.
TERMINAL: frozenset[State] = frozenset(
    {State.COMPLETE, State.EXECUTOR_ERROR, State.SYSTEM_ERROR, State.CANCELED, State.PREEMPTED}
)

_ACTIVE = frozenset({State.QUEUED, State.INITIALIZING, State.RUNNING})

#: For each target state, the states a task may move to it from. Nothing else is allowed:
#: a terminal state never changes, and CANCELING only ever ends in CANCELED, so a cancel
#: wins over progress reported late. Preemption returns a task to QUEUED (design section 10).
ALLOWED_FROM: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.INITIALIZING, State.RUNNING}),
    State.INITIALIZING: frozenset({State.QUEUED}),
    State.RUNNING: frozenset({State.QUEUED, State.INITIALIZING}),
    State.COMPLETE: _ACTIVE,
    State.EXECUTOR_ERROR: _ACTIVE,
    State.SYSTEM_ERROR: _ACTIVE,
    State.CANCELING: _ACTIVE,
    State.CANCELED: frozenset({State.CANCELING}),
}


def allowed_from(to: State, expect: Iterable[State] | None = None) -> frozenset[State]:
    """Return the states from which a move to ``to`` is allowed, narrowed to ``expect``."""
    allowed = ALLOWED_FROM.get(to, frozenset())
    return allowed if expect is None else allowed & frozenset(expect)


@dataclass
class TaskRecord:
    """One stored task.

    ``doc`` is the task's TES JSON as the FULL view shows it (``id``, ``state``,
    ``creation_time``, ``logs`` included; ``logs`` absent until the first attempt).
    ``owner`` and ``notes`` are ours and never leave the server: ``notes`` are system logs
    found before any attempt exists (e.g. a dropped backend parameter); the store prepends
    them to the first attempt's ``system_logs``. So are ``queue``, the task's LocalQueue (the
    store derives it on create when it is empty: :func:`queue_of`), and ``since``, when the
    task entered its state (epoch seconds, set by the store); a minimal listing leaves both out.
    """

    id: str
    state: State
    owner: str
    doc: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    queue: str = ""
    since: float | None = None


def queue_of(doc: dict[str, Any], default: str) -> str:
    """Return the LocalQueue of a task doc that came without one: the one it names (or its
    route put there), else ``default``. New tasks carry the queue the worker will label their
    Job with (app.policy.local_queue, which also knows the preemptible queue); this is for
    tasks stored by an earlier release, and for records made without it."""
    params = (doc.get("resources") or {}).get("backend_parameters") or {}
    return str(params.get("queue") or default)


@dataclass(frozen=True)
class QueueStats:
    """One LocalQueue at a glance: tasks per state, tasks that ended after a given time, and
    the task that has waited (QUEUED) longest, if any."""

    queue: str
    states: dict[State, int]
    finished: int
    oldest: TaskRecord | None


@dataclass(frozen=True)
class TaskFilter:
    """ListTasks filters, ANDed. A tag whose value is "" matches any value of that key."""

    name_prefix: str | None = None
    state: State | None = None
    tags: dict[str, str] = field(default_factory=dict)
    owner: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of tasks, newest first, and whether more follow the last one."""

    records: list[TaskRecord]
    more: bool


@dataclass(frozen=True)
class RenderedPage:
    """One page of tasks as JSON texts in one view, newest first (``app.views.task_json``)."""

    tasks: list[str]
    last_id: str | None
    more: bool


class StoreError(Exception):
    """The store could not do what was asked (the database is unreachable, say)."""


class TaskStore(Protocol):
    """Durable record of tasks. Every state change is one compare-and-set."""

    def create(self, record: TaskRecord) -> None:
        """Store a new task; its id must be new."""
        ...

    def create_many(self, records: Sequence[TaskRecord]) -> builtins.list[StoreError | None]:
        """Store new tasks at once (one transaction, one round trip); per record, its error."""
        ...

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord | None:
        """Return the task, or None if absent or (when ``owner`` is given) someone else's."""
        ...

    def get_rendered(self, task_id: str, view: View, owner: str | None = None) -> str | None:
        """Return the task's JSON text in ``view`` (as ``get`` finds it), from its stored views."""
        ...

    def list_rendered(
        self, flt: TaskFilter, page_size: int, before: str | None = None, view: View = View.MINIMAL
    ) -> RenderedPage:
        """Return ``list``'s page as JSON texts in ``view``, from the tasks' stored views."""
        ...

    def render_pending(self, limit: int = 1000) -> int:
        """Store the views of up to ``limit`` tasks stored without them (by an older release).

        Returns how many it rendered; 0 once none is left. Reads never depend on it: a task
        without stored views is rendered from its doc when read.
        """
        ...

    def list(
        self,
        flt: TaskFilter,
        page_size: int,
        before: str | None = None,
        minimal: bool = False,
    ) -> Page:
        """Return up to ``page_size`` matching tasks with ids below ``before``, newest first.

        With ``minimal`` the records' ``doc`` holds only ``id`` and ``state``.
        """
        ...

    def transition(self, task_id: str, to: State, expect: Iterable[State] | None = None) -> bool:
        """Move the task to ``to`` if its state is in ``allowed_from(to, expect)``."""
        ...

    def append_attempt(self, task_id: str, tasklog: dict[str, Any]) -> int:
        """Append one TES TaskLog (notes first in its system_logs); return its index."""
        ...

    def update_attempt(self, task_id: str, index: int, changes: dict[str, Any]) -> bool:
        """Set top-level fields of the attempt at ``index``; False if it does not exist."""
        ...

    def ids_in_states(self, states: Iterable[State], limit: int = 1000) -> builtins.list[str]:
        """Return ids of tasks in any of ``states``, oldest first (the watcher's sweeps)."""
        ...

    def counts(self) -> dict[tuple[str, State], int]:
        """Return how many tasks each (LocalQueue, state) holds, without reading every task."""
        ...

    def queues(self, finished_after: float) -> builtins.list[QueueStats]:
        """Return every LocalQueue's :class:`QueueStats`; ``finished`` counts the tasks that
        reached a terminal state at or after ``finished_after`` (epoch seconds)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# -- what an attempt write does to a stored doc: pure, shared by the stores -------------------


def add_attempt(
    doc: dict[str, Any], notes: builtins.list[str], tasklog: dict[str, Any]
) -> tuple[int, builtins.list[str]]:
    """Append ``tasklog`` to ``doc`` (the first takes ``notes`` into its system_logs).

    Returns the new attempt's index and the notes left to keep.
    """
    logs: builtins.list[dict[str, Any]] = doc.setdefault("logs", [])
    entry = dict(tasklog)
    if not logs and notes:
        entry["system_logs"] = [*notes, *(entry.get("system_logs") or [])]
    logs.append(entry)
    return len(logs) - 1, (notes if len(logs) > 1 else [])


def change_attempt(doc: dict[str, Any], index: int, changes: dict[str, Any]) -> bool:
    """Set top-level fields of ``doc``'s attempt at ``index``; False if it does not exist."""
    logs: builtins.list[dict[str, Any]] = doc.get("logs") or []
    if not 0 <= index < len(logs):
        return False
    logs[index].update(changes)
    return True
