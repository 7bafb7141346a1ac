"""What the SQLite store keeps per LocalQueue: each task's queue and since-when, a count of
tasks per (queue, state) kept by triggers, the migration of older files, and the queries.

The counts live in their own small table, updated by triggers in the same transaction as the
row they count, so a metrics scrape or the dashboard's queues page reads a few rows instead of
counting 100,000 tasks. The index on (state, queue, since) finds the tasks that ended in the
last hour and the task that has waited longest, per queue, without reading any other row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from app.models import State
from app.store.base import TERMINAL, QueueStats, StoreError, TaskRecord

#: Columns a full record is read from, in the order :func:`record` expects.
COLUMNS = ("id", "state", "owner", "notes", "doc", "queue", "since")
_STATES = {state.value: state for state in State}

_COUNTED = """
CREATE TABLE IF NOT EXISTS task_counts (
    queue TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (queue, state)
) WITHOUT ROWID;
"""
_ADD = (
    "INSERT INTO task_counts (queue, state, n) VALUES ({q}, {s}, 1)"
    " ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;"
)
_REMOVE = "UPDATE task_counts SET n = n - 1 WHERE queue = {q} AND state = {s};"
_NEW, _OLD = ("coalesce(NEW.queue, '')", "NEW.state"), ("coalesce(OLD.queue, '')", "OLD.state")
_TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS task_counts_insert AFTER INSERT ON tasks BEGIN
    {_ADD.format(q=_NEW[0], s=_NEW[1])}
END;
CREATE TRIGGER IF NOT EXISTS task_counts_update AFTER UPDATE OF state, queue ON tasks
WHEN OLD.state IS NOT NEW.state OR OLD.queue IS NOT NEW.queue BEGIN
    {_REMOVE.format(q=_OLD[0], s=_OLD[1])}
    {_ADD.format(q=_NEW[0], s=_NEW[1])}
END;
CREATE TRIGGER IF NOT EXISTS task_counts_delete AFTER DELETE ON tasks BEGIN
    {_REMOVE.format(q=_OLD[0], s=_OLD[1])}
END;
CREATE INDEX IF NOT EXISTS tasks_state_queue_since ON tasks (state, queue, since);
"""
# Tasks stored before these columns existed: the queue the worker gave them, and their creation
# time as the moment they entered their state (the best that is known).
_BACKFILL = """
UPDATE tasks SET
    queue = coalesce(json_extract(doc, '$.resources.backend_parameters.queue'), ?),
    since = coalesce((julianday(json_extract(doc, '$.creation_time')) - 2440587.5) * 86400.0, 0)
WHERE queue IS NULL
"""


def migrate(db: sqlite3.Connection, default_queue: str) -> None:
    """Add what this module keeps to a store file of any earlier version (idempotent).

    Runs in one write transaction, so processes opening the same file at once see either the
    old file or the whole change.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        if "queue" not in columns:
            db.execute("ALTER TABLE tasks ADD COLUMN queue TEXT")
            db.execute("ALTER TABLE tasks ADD COLUMN since REAL")
            db.execute(_BACKFILL, (default_queue,))
        fresh = not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'task_counts'"
        ).fetchone()
        db.execute(_COUNTED)
        if fresh:
            db.execute(
                "INSERT INTO task_counts (queue, state, n)"
                " SELECT coalesce(queue, ''), state, count(*) FROM tasks GROUP BY 1, 2"
            )
        for statement in _statements(_TRIGGERS):
            db.execute(statement)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a script of CREATE statements (triggers hold ';' inside BEGIN ... END)."""
    out, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current)
        if text.rstrip().endswith(";") and text.count("BEGIN") == text.count("END;"):
            out.append(text)
            current = []
    return out


def record(row: tuple[Any, ...]) -> TaskRecord:
    """Return the record of a row of :data:`COLUMNS`."""
    task_id, state, owner, notes, doc, queue, since = row
    full: dict[str, Any] = {"id": task_id, "state": state}
    full.update(json.loads(doc))
    return TaskRecord(task_id, _STATES[state], owner, full, json.loads(notes), queue or "", since)


class _Store(Protocol):
    def _db(self) -> sqlite3.Connection: ...

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord | None: ...


class QueueQueries:
    """The SqliteStore's queries per LocalQueue (a mixin of the store)."""

    def counts(self: _Store) -> dict[tuple[str, State], int]:
        """Return how many tasks each (LocalQueue, state) holds: a few rows, kept by triggers."""
        with translated("cannot count tasks"):
            return _counts(self._db())

    def queues(self: _Store, finished_after: float) -> list[QueueStats]:
        """Return every LocalQueue's counts, recent ends and longest wait, from indexes."""
        with translated("cannot summarise the queues"):
            db = self._db()
            by_queue: dict[str, dict[State, int]] = {}
            for (queue, state), n in _counts(db).items():
                by_queue.setdefault(queue, {})[state] = n
            found: list[tuple[str, dict[State, int], int, str | None]] = []
            for queue, states in sorted(by_queue.items()):
                finished = 0
                for state in sorted(TERMINAL & set(states), key=lambda s: s.value):
                    finished += db.execute(
                        "SELECT count(*) FROM tasks INDEXED BY tasks_state_queue_since"
                        " WHERE state = ? AND queue = ? AND since >= ?",
                        (state.value, queue, finished_after),
                    ).fetchone()[0]
                row = db.execute(
                    "SELECT id FROM tasks INDEXED BY tasks_state_queue_since"
                    " WHERE state = ? AND queue = ? ORDER BY since LIMIT 1",
                    (State.QUEUED.value, queue),
                ).fetchone()
                found.append((queue, states, finished, row and row[0]))
        return [
            QueueStats(queue, states, finished, self.get(oldest) if oldest else None)
            for queue, states, finished, oldest in found
        ]


def _counts(db: sqlite3.Connection) -> dict[tuple[str, State], int]:
    rows = db.execute("SELECT queue, state, n FROM task_counts WHERE n > 0").fetchall()
    return {(queue, State(state)): int(n) for queue, state, n in rows}


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn SQLite's errors into StoreError, saying ``what`` failed (the whole store's rule)."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise StoreError(f"{what}: it already exists") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{what}: {exc}") from exc
