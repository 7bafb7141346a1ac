"""The embedded task store: one SQLite file in WAL mode, shared by threads and processes."""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import views
from app.models import State, View
from app.store import sqlite_plan, sqlite_queues, sqlite_wal
from app.store.base import (
    Page,
    RenderedPage,
    StoreError,
    TaskFilter,
    TaskRecord,
    add_attempt,
    allowed_from,
    change_attempt,
    queue_of,
)

# `doc` is the last column: a large doc spills into overflow pages, and columns stored after
# it would have to be read from there too. Each index costs a page written per create, so
# owner is in the state index only; the planner weighs the owner's own stream against tags
# and names instead. basic_view and full_view hold the task's BASIC and FULL views as JSON
# (app.views.fragments), rewritten with the doc, so that a page of them is a concatenation.
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT,
    queue TEXT, since REAL,
    notes TEXT NOT NULL DEFAULT '[]',
    basic_view TEXT,
    doc TEXT NOT NULL,
    full_view TEXT
);
CREATE INDEX IF NOT EXISTS tasks_state_name ON tasks (state, id, name);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, id, state);
CREATE INDEX IF NOT EXISTS tasks_owner_state_name ON tasks (owner, state, id, name);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks (name, id);
CREATE TABLE IF NOT EXISTS tags (
    task_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (task_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_key ON tags (key, task_id);
CREATE INDEX IF NOT EXISTS tags_kv ON tags (key, value, task_id);
COMMIT;
"""

_INSERT = (
    "INSERT INTO tasks (id, state, owner, name, queue, since, notes, doc, basic_view, full_view)"
    f" VALUES ({', '.join('?' * 10)})"
)
_UPDATE = "UPDATE tasks SET doc = ?, notes = ?, basic_view = ?, full_view = ? WHERE id = ?"
#: Tasks stored by a release without stored views (their columns were added by _migrate).
_UNRENDERED = "CREATE INDEX IF NOT EXISTS tasks_unrendered ON tasks (id) WHERE basic_view IS NULL"
#: The columns a listing reads for each view: a stored view, or the doc where there is none.
_VIEW_COLUMNS = {
    View.MINIMAL: "t.id, t.state",
    View.BASIC: "t.id, t.state, t.basic_view, CASE WHEN t.basic_view IS NULL THEN t.doc END",
    View.FULL: "t.id, t.state, t.full_view, CASE WHEN t.full_view IS NULL THEN t.doc END",
}
#: The columns of a whole record (sqlite_queues.record reads them).
_RECORD_COLUMNS = ", ".join(f"t.{column}" for column in sqlite_queues.COLUMNS)
_record = sqlite_queues.record
_TAG = "INSERT INTO tags (task_id, key, value) VALUES (?, ?, ?)"

_STATES = {state.value: state for state in State}


@dataclass(eq=False, slots=True, weakref_slot=True)
class _Holder:
    """One thread's connection; a weakly referenceable box so close() can find it."""

    db: sqlite3.Connection
    pid: int = field(default_factory=os.getpid)


_translated = sqlite_queues.translated


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class SqliteStore(sqlite_queues.QueueQueries):
    """TaskStore on one SQLite file: one connection per thread, WAL so readers never block."""

    def __init__(self, path: Path, busy_timeout_ms: int = 30_000, default_queue: str = "") -> None:
        """Open (and create, with its parent directories) the store file at ``path``."""
        self._path, self._queue = Path(path), default_queue
        self._busy_ms = int(busy_timeout_ms)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._forked: list[_Holder] = []
        self._closed = False
        self._writers = sqlite_wal.Writers(self._path, self._checkpoint)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {self._path}: {exc}") from exc
        with _translated(f"cannot open the task store {self._path}"):
            db = self._db()
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                why = f"{self._path} cannot use WAL mode (got {mode!r}); put it on a local disk"
                raise StoreError(why)
            db.executescript(_SCHEMA)
            _migrate(db)
            sqlite_queues.migrate(db, default_queue)

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the task store is closed")
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is not None:
            if holder.pid == os.getpid():
                return holder.db
            # Inherited across fork: closing it here could drop the parent's file locks
            # (SQLite's "don't carry a connection across fork"), so abandon it, never close.
            self._forked.append(holder)
        db = sqlite3.connect(
            self._path, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        # In WAL mode NORMAL never corrupts; a power cut may lose the last commits only.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint = {sqlite_wal.BACKSTOP_PAGES}")
        # 16 MiB of pages, not 2: a listing's planner samples and its page (256 rows with
        # their views) evicted each other from the default cache.
        db.execute("PRAGMA cache_size = -16384")
        holder = _Holder(db)
        self._local.holder = holder
        with self._lock:
            self._holders.add(holder)
        return db

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a read-then-write transaction that started
        # deferred could fail with SQLITE_BUSY_SNAPSHOT instead of waiting its turn.
        db = self._db()
        with self._writers.turn():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def create(self, record: TaskRecord) -> None:
        """Store a new task; its id must be new."""
        [error] = self.create_many([record])
        if error is not None:
            raise error

    def create_many(self, records: Sequence[TaskRecord]) -> builtins.list[StoreError | None]:
        """Store new tasks in one transaction; per record, its error (only if ids repeat)."""
        if not records:
            return []
        rows: builtins.list[tuple[Any, ...]] = []
        tags: builtins.list[tuple[str, str, str]] = []
        for record in records:
            doc = {key: value for key, value in record.doc.items() if key != "state"}
            basic, full = views.fragments(doc)
            state, name, notes = State(record.state).value, doc.get("name"), list(record.notes)
            queue = record.queue or queue_of(doc, self._queue)
            row = (record.id, state, record.owner, name, queue, time.time())
            rows.append((*row, _dumps(notes), _dumps(doc), basic, full))
            tags.extend(
                (record.id, key, str(value)) for key, value in (doc.get("tags") or {}).items()
            )
        what = f"cannot create task {records[0].id}" if len(records) == 1 else "cannot create tasks"
        try:
            with _translated(what), self._immediate() as db:
                db.executemany(_INSERT, rows)
                db.executemany(_TAG, tags)
        except StoreError as exc:
            if len(records) == 1 or not isinstance(exc.__cause__, sqlite3.IntegrityError):
                return [exc] * len(records)
            # An id that exists already: store the others, one by one, to tell which it was.
            return [error for record in records for error in self.create_many([record])]
        return [None] * len(records)

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord | None:
        """Return the task, or None if absent or (when ``owner`` is given) someone else's."""
        sql = f"SELECT {', '.join(sqlite_queues.COLUMNS)} FROM tasks WHERE id = ?"
        with _translated(f"cannot read task {task_id}"):
            row = self._db().execute(sql, (task_id,)).fetchone()
        if row is None or (owner is not None and row[2] != owner):
            return None
        return _record(row)

    def get_rendered(self, task_id: str, view: View, owner: str | None = None) -> str | None:
        """Return the task's JSON text in ``view`` (as ``get`` finds it), from its stored views."""
        sql = f"SELECT t.owner, {_VIEW_COLUMNS[view]} FROM tasks AS t WHERE t.id = ?"
        with _translated(f"cannot read task {task_id}"):
            row = self._db().execute(sql, (task_id,)).fetchone()
        if row is None or (owner is not None and row[0] != owner):
            return None
        return _rendered(row[1:], view)

    def list(
        self,
        flt: TaskFilter,
        page_size: int,
        before: str | None = None,
        minimal: bool = False,
    ) -> Page:
        """Return up to ``page_size`` matching tasks with ids below ``before``, newest first.

        With ``minimal`` the records' ``doc`` holds only ``id`` and ``state``, and their
        ``owner`` is the filter's owner (or "") because the hot path reads no more columns.
        """
        cols = _VIEW_COLUMNS[View.MINIMAL] if minimal else _RECORD_COLUMNS
        rows, more = self._rows(flt, page_size, before, cols)
        if not minimal:
            return Page(records=[_record(row) for row in rows], more=more)
        owner = flt.owner or ""
        records = [TaskRecord(i, _STATES[s], owner, {"id": i, "state": s}) for i, s in rows]
        return Page(records=records, more=more)

    def list_rendered(
        self, flt: TaskFilter, page_size: int, before: str | None = None, view: View = View.MINIMAL
    ) -> RenderedPage:
        """Return ``list``'s page as JSON texts in ``view``, from the tasks' stored views."""
        rows, more = self._rows(flt, page_size, before, _VIEW_COLUMNS[view])
        last = rows[-1][0] if rows else None
        return RenderedPage(tasks=[_rendered(row, view) for row in rows], last_id=last, more=more)

    def _rows(
        self, flt: TaskFilter, page_size: int, before: str | None, cols: str
    ) -> tuple[builtins.list[tuple[Any, ...]], bool]:
        """Return a listing's rows of ``cols``, and whether more follow."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        with _translated("cannot list tasks"):
            db = self._db()
            streams, base = sqlite_plan.streams(flt, before)
            stream = sqlite_plan.choose(db, streams, base)
            window = 4 * (page_size + 1) if stream is base and flt.name_prefix else 0
            sql, params = sqlite_plan.listing(stream, flt, cols, window)
            rows = db.execute(sql, (*params, page_size + 1)).fetchall()
            if window and len(rows) <= page_size:
                # A dense name prefix, rare among the newest tasks: go on in id order if the
                # matches seen promise a page within SORTABLE rows, else sort every match.
                need = page_size + 1 - len(rows)
                if len(rows) * sqlite_plan.SORTABLE < need * window:
                    stream = next(s for s in streams if s.kind == "name")
                sql, params = sqlite_plan.listing(stream, flt, cols)
                rows = db.execute(sql, (*params, page_size + 1)).fetchall()
        return rows[:page_size], len(rows) > page_size

    def transition(self, task_id: str, to: State, expect: Iterable[State] | None = None) -> bool:
        """Move the task to ``to`` if its state is in ``allowed_from(to, expect)``."""
        allowed = sorted(state.value for state in allowed_from(to, expect))
        if not allowed:
            return False
        marks = ", ".join("?" * len(allowed))
        sql = f"UPDATE tasks SET state = ?, since = ? WHERE id = ? AND state IN ({marks})"
        with _translated(f"cannot move task {task_id} to {to.value}"), self._writers.turn():
            values = (to.value, time.time(), task_id, *allowed)
            return self._db().execute(sql, values).rowcount == 1

    def append_attempt(self, task_id: str, tasklog: dict[str, Any]) -> int:
        """Append one TES TaskLog (notes first in its system_logs); return its index."""
        with _translated(f"cannot add an attempt to task {task_id}"), self._immediate() as db:
            row = db.execute("SELECT notes, doc FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise StoreError(f"cannot add an attempt to task {task_id}: no such task")
            doc: dict[str, Any] = json.loads(row[1])
            index, notes = add_attempt(doc, json.loads(row[0]), tasklog)
            db.execute(_UPDATE, (_dumps(doc), _dumps(notes), *views.fragments(doc), task_id))
            return index

    def update_attempt(self, task_id: str, index: int, changes: dict[str, Any]) -> bool:
        """Set top-level fields of the attempt at ``index``; False if it does not exist."""
        if index < 0:
            return False
        what = f"cannot update attempt {index} of task {task_id}"
        with _translated(what), self._immediate() as db:
            row = db.execute("SELECT doc, notes FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return False
            doc: dict[str, Any] = json.loads(row[0])
            if not change_attempt(doc, index, changes):
                return False
            db.execute(_UPDATE, (_dumps(doc), row[1], *views.fragments(doc), task_id))
        return True

    def render_pending(self, limit: int = 1000) -> int:
        """Store the views of up to ``limit`` tasks stored without them (by an older release)."""
        done = 0
        with _translated("cannot render stored tasks"):
            while done < limit:
                with self._immediate() as db:
                    sql = "SELECT id, doc FROM tasks WHERE basic_view IS NULL LIMIT ?"
                    rows = db.execute(sql, (min(200, limit - done),)).fetchall()
                    db.executemany(
                        "UPDATE tasks SET basic_view = ?, full_view = ? WHERE id = ?",
                        [(*views.fragments(json.loads(doc)), i) for i, doc in rows],
                    )
                if not rows:
                    break
                done += len(rows)
        return done

    def ids_in_states(self, states: Iterable[State], limit: int = 1000) -> builtins.list[str]:
        """Return ids of tasks in any of ``states``, oldest first (the watcher's sweeps)."""
        values = sorted({State(state).value for state in states})
        if not values or limit < 1:
            return []
        marks = ", ".join("?" * len(values))
        sql = f"SELECT id FROM tasks WHERE state IN ({marks}) ORDER BY id LIMIT ?"
        with _translated("cannot list tasks by state"):
            return [row[0] for row in self._db().execute(sql, (*values, limit))]

    def _checkpoint(self) -> None:
        with _translated("cannot checkpoint"):
            self._db().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        self._writers.close()  # first: its checkpoint thread uses a connection of its own
        with self._lock:
            self._closed = True
            holders = [holder for holder in self._holders if holder.pid == os.getpid()]
            self._holders = weakref.WeakSet()
        for holder in holders:
            holder.db.close()


def _migrate(db: sqlite3.Connection) -> None:
    """Add the stored views to a store made by an older release (render_pending fills them)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        have = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        for column in ("basic_view", "full_view"):
            if column not in have:
                db.execute(f"ALTER TABLE tasks ADD COLUMN {column} TEXT")
        db.execute(_UNRENDERED)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _rendered(row: tuple[Any, ...], view: View) -> str:
    """Return a task's JSON text from (id, state[, stored view, doc if no stored view])."""
    if view is View.MINIMAL:
        return views.task_json(row[0], row[1])
    fragment = row[2]
    if fragment is None:  # stored by an older release and not rendered yet
        doc = json.loads(row[3])
        fragment = views.fragments(doc)[0 if view is View.BASIC else 1]
    return views.task_json(row[0], row[1], fragment)
