"""The embedded task store: one SQLite file in WAL mode, shared by threads and processes."""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.models import State
from app.store import sqlite_queues
from app.store.base import Page, StoreError, TaskFilter, TaskRecord, allowed_from, queue_of

# `doc` is the last column: a large doc spills into overflow pages, and columns stored after
# it would have to be read from there too. Each index costs a page written per create, so
# owner is in the state index only; the planner weighs the owner's own stream against tags
# and names instead.
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT,
    queue TEXT, since REAL,
    notes TEXT NOT NULL DEFAULT '[]',
    doc TEXT NOT NULL
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

_COLUMNS = "id, state, owner, name, queue, since, notes, doc"
_INSERT = f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 8)})"
_UPDATE = "UPDATE tasks SET doc = ?, notes = ? WHERE id = ?"
_record = sqlite_queues.record
_TAG = "INSERT INTO tags (task_id, key, value) VALUES (?, ?, ?)"

#: How many matches of a filter the planner looks at: up to _SORTABLE name matches are cheap
#: to sort by id; for the other filters, where the _SAMPLE-th newest match lies tells density.
_SORTABLE, _SAMPLE = 4096, 1024
_STATES = {state.value: state for state in State}


@dataclass(frozen=True)
class _Stream:
    """One way to drive a listing: an index scanned under ``terms`` (columns, no alias)."""

    kind: str  # "tag", "state", "name" (the only one not in id order), or "base"
    index: str | None
    terms: tuple[str, ...]
    params: tuple[Any, ...]
    tag: str | None = None  # the tag key a "tag" stream serves, from the tags table
    owner: bool = False  # the index applies the owner filter itself

    def where(self, alias: str) -> str:
        """Return the terms as one condition on table ``alias``."""
        return " AND ".join(f"{alias}.{term}" for term in self.terms) or "1"


@dataclass(eq=False, slots=True, weakref_slot=True)
class _Holder:
    """One thread's connection; a weakly referenceable box so close() can find it."""

    db: sqlite3.Connection
    pid: int = field(default_factory=os.getpid)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise StoreError(f"{what}: it already exists") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{what}: {exc}") from exc


def _prefix_end(prefix: str) -> str | None:
    """Return the least string above every string that starts with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code <= 0x10FFFF:  # surrogates cannot be stored as UTF-8: skip to U+E000
            return "".join(chars) + chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)
    return None


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
        doc = {key: value for key, value in record.doc.items() if key != "state"}
        tags: dict[str, Any] = doc.get("tags") or {}
        with _translated(f"cannot create task {record.id}"), self._immediate() as db:
            queue = record.queue or queue_of(doc, self._queue)
            row = (record.id, State(record.state).value, record.owner, doc.get("name"), queue)
            notes = _dumps(list(record.notes))
            db.execute(_INSERT, (*row, time.time(), notes, _dumps(doc)))
            db.executemany(_TAG, [(record.id, key, str(value)) for key, value in tags.items()])

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord | None:
        """Return the task, or None if absent or (when ``owner`` is given) someone else's."""
        sql = f"SELECT {', '.join(sqlite_queues.COLUMNS)} FROM tasks WHERE id = ?"
        with _translated(f"cannot read task {task_id}"):
            row = self._db().execute(sql, (task_id,)).fetchone()
        if row is None or (owner is not None and row[2] != owner):
            return None
        return _record(row)

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
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        with _translated("cannot list tasks"):
            db = self._db()
            streams, base = _streams(flt, before)
            stream = _choose(db, streams, base)
            window = 4 * (page_size + 1) if stream is base and flt.name_prefix else 0
            sql, params = _listing(stream, flt, minimal, window)
            rows = db.execute(sql, (*params, page_size + 1)).fetchall()
            if window and len(rows) <= page_size:
                # A dense name prefix, rare among the newest tasks: go on in id order if the
                # matches seen promise a page within _SORTABLE rows, else sort every match.
                need = page_size + 1 - len(rows)
                if len(rows) * _SORTABLE < need * window:
                    stream = next(s for s in streams if s.kind == "name")
                sql, params = _listing(stream, flt, minimal)
                rows = db.execute(sql, (*params, page_size + 1)).fetchall()
        more = len(rows) > page_size
        rows = rows[:page_size]
        if not minimal:
            return Page(records=[_record(row) for row in rows], more=more)
        owner = flt.owner or ""
        records = [TaskRecord(i, _STATES[s], owner, {"id": i, "state": s}) for i, s in rows]
        return Page(records=records, more=more)

    def transition(self, task_id: str, to: State, expect: Iterable[State] | None = None) -> bool:
        """Move the task to ``to`` if its state is in ``allowed_from(to, expect)``."""
        allowed = sorted(state.value for state in allowed_from(to, expect))
        if not allowed:
            return False
        marks = ", ".join("?" * len(allowed))
        sql = f"UPDATE tasks SET state = ?, since = ? WHERE id = ? AND state IN ({marks})"
        with _translated(f"cannot move task {task_id} to {to.value}"):
            return self._db().execute(sql, (to.value, time.time(), task_id, *allowed)).rowcount == 1

    def append_attempt(self, task_id: str, tasklog: dict[str, Any]) -> int:
        """Append one TES TaskLog (notes first in its system_logs); return its index."""
        with _translated(f"cannot add an attempt to task {task_id}"), self._immediate() as db:
            row = db.execute("SELECT notes, doc FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise StoreError(f"cannot add an attempt to task {task_id}: no such task")
            notes: list[str] = json.loads(row[0])
            doc: dict[str, Any] = json.loads(row[1])
            logs: list[dict[str, Any]] = doc.setdefault("logs", [])
            entry = dict(tasklog)
            first = not logs
            if first and notes:
                entry["system_logs"] = [*notes, *(entry.get("system_logs") or [])]
            logs.append(entry)
            notes_after = "[]" if first else row[0]
            db.execute(_UPDATE, (_dumps(doc), notes_after, task_id))
            return len(logs) - 1

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
            logs: list[dict[str, Any]] = doc.get("logs") or []
            if index >= len(logs):
                return False
            logs[index].update(changes)
            db.execute(_UPDATE, (_dumps(doc), row[1], task_id))
        return True

    def ids_in_states(self, states: Iterable[State], limit: int = 1000) -> builtins.list[str]:
        """Return ids of tasks in any of ``states``, oldest first (the watcher's sweeps)."""
        values = sorted({State(state).value for state in states})
        if not values or limit < 1:
            return []
        marks = ", ".join("?" * len(values))
        sql = f"SELECT id FROM tasks WHERE state IN ({marks}) ORDER BY id LIMIT ?"
        with _translated("cannot list tasks by state"):
            return [row[0] for row in self._db().execute(sql, (*values, limit))]

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            holders = [holder for holder in self._holders if holder.pid == os.getpid()]
            self._holders = weakref.WeakSet()
        for holder in holders:
            holder.db.close()


def _streams(flt: TaskFilter, before: str | None) -> tuple[list[_Stream], _Stream]:
    """Return the filters' own index streams, and the owner's (or all) id-order stream."""
    own: tuple[str, ...] = ("owner = ?",) if flt.owner is not None else ()
    own_p: tuple[Any, ...] = (flt.owner,) if flt.owner is not None else ()
    lt: tuple[str, ...] = ("id < ?",) if before else ()
    lt_p: tuple[Any, ...] = (before,) if before else ()
    streams: list[_Stream] = []
    for key, value in flt.tags.items():
        kv: tuple[str, ...] = ("value = ?",) if value else ()
        terms = ("key = ?", *kv, *(f"task_{term}" for term in lt))
        params = (key, *((value,) if value else ()), *lt_p)
        streams.append(_Stream("tag", f"tags_{'kv' if value else 'key'}", terms, params, key))
    if flt.state is not None:
        terms, params = (*own, "state = ?", *lt), (*own_p, flt.state.value, *lt_p)
        index = "tasks_owner_state_name" if own else "tasks_state_name"
        streams.append(_Stream("state", index, terms, params, owner=True))
    if flt.name_prefix:
        end = _prefix_end(flt.name_prefix)
        upper: tuple[str, ...] = ("name < ?",) if end is not None else ()
        terms = ("name >= ?", *upper, *lt)
        params = (flt.name_prefix, *((end,) if end is not None else ()), *lt_p)
        streams.append(_Stream("name", "tasks_name", terms, params))
    base = _Stream("base", "tasks_owner" if own else None, (*own, *lt), (*own_p, *lt_p), owner=True)
    return streams, base


def _choose(db: sqlite3.Connection, streams: list[_Stream], base: _Stream) -> _Stream:
    """Pick the stream that finds a page soonest, from a capped look at each one's matches."""
    if not streams:
        return base
    if len(streams) == 1 and streams[0].kind != "name" and (streams[0].owner or base.index is None):
        return streams[0]
    if base.index is not None:  # an owner filter: the owner's own stream is a candidate too
        streams = [*streams, base]
    ranked: list[tuple[int, int, str, _Stream]] = []
    for stream in streams:
        table, col = ("tags", "task_id") if stream.tag is not None else ("tasks", "id")
        sub = (
            f"SELECT s.{col} FROM {table} AS s INDEXED BY {stream.index} WHERE {stream.where('s')}"
        )
        if stream.kind != "name":
            # For a dense filter, the older its _SAMPLE-th newest match, the sparser it is.
            sample = f"{sub} ORDER BY s.{col} DESC LIMIT 1 OFFSET {_SAMPLE - 1}"
            row = db.execute(sample, stream.params).fetchone()
            if row is not None:
                ranked.append((1, 0, row[0], stream))
                continue
        cap = _SORTABLE if stream.kind == "name" else _SAMPLE
        count = db.execute(f"SELECT count(*) FROM ({sub} LIMIT {cap})", stream.params).fetchone()
        if count[0] < cap:  # few matches: driving from them costs about their number
            ranked.append((0, count[0], "", stream))
    # Nothing ranked: only a dense name prefix, so scan newest first and test the name.
    return min(ranked, key=lambda rank: rank[:3])[3] if ranked else base


def _listing(
    stream: _Stream, flt: TaskFilter, minimal: bool, window: int = 0
) -> tuple[str, tuple[Any, ...]]:
    """Return the listing SQL driven by ``stream`` and its parameters (less the LIMIT).

    A ``window`` limits an id-order scan to that many of the newest tasks.
    """
    cols = "t.id, t.state" if minimal else ", ".join(f"t.{c}" for c in sqlite_queues.COLUMNS)
    index = f" INDEXED BY {stream.index}" if stream.index else ""
    if stream.tag is not None:
        source = f"tags AS g{index} CROSS JOIN tasks AS t ON t.id = g.task_id"
        where, order = [stream.where("g")], "g.task_id"
    else:
        source, where, order = f"tasks AS t{index}", [stream.where("t")], "t.id"
    params: list[Any] = list(stream.params)
    if window:
        where.append(
            f"t.id >= coalesce((SELECT w.id FROM tasks AS w{index} WHERE {stream.where('w')}"
            f" ORDER BY w.id DESC LIMIT 1 OFFSET {window - 1}), '')"
        )
        params.extend(stream.params)
    # A leading + keeps a term off the indexes, so SQLite drives from the chosen one only.
    if flt.owner is not None and not stream.owner:
        where.append("+t.owner = ?")
        params.append(flt.owner)
    if flt.state is not None and stream.kind != "state":
        where.append("+t.state = ?")
        params.append(flt.state.value)
    if flt.name_prefix and stream.kind != "name":
        end = _prefix_end(flt.name_prefix)
        where.append("+t.name >= ?" + (" AND +t.name < ?" if end is not None else ""))
        params.extend((flt.name_prefix, end) if end is not None else (flt.name_prefix,))
    for key, value in flt.tags.items():
        if key != stream.tag:
            # Tested on the driving tag row when there is one, before the task row is read.
            task = "g.task_id" if stream.tag is not None else "t.id"
            kv = " AND x.value = ?" if value else ""
            where.append(
                f"EXISTS (SELECT 1 FROM tags AS x WHERE x.task_id = {task} AND x.key = ?{kv})"
            )
            params.extend((key, value) if value else (key,))
    cond = " AND ".join(where)
    if stream.kind == "name":
        # Sort the matching ids alone, then read just the page's rows: reading each match's
        # row before sorting would cost a lookup per match.
        sql = (
            f"SELECT {cols} FROM tasks AS t WHERE t.id IN (SELECT t.id FROM {source}"
            f" WHERE {cond} ORDER BY t.id DESC LIMIT ?) ORDER BY t.id DESC"
        )
    else:
        sql = f"SELECT {cols} FROM {source} WHERE {cond} ORDER BY {order} DESC LIMIT ?"
    return sql, tuple(params)
