"""The production task store on MongoDB: one document per task, each change one atomic update."""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.models import State
from app.store.base import (
    TERMINAL,
    Page,
    QueueStats,
    StoreError,
    TaskFilter,
    TaskRecord,
    allowed_from,
    queue_of,
)

_ASC, _DESC = pymongo.ASCENDING, pymongo.DESCENDING

#: Every list filter (alone and under an owner) ends in _id descending, so one index scan
#: yields a page newest first; the name range is the exception and the planner may sort.
#: Counts per queue and state, recent ends and the longest wait: all read from this index alone.
_BY_QUEUE = [("state", _ASC), ("queue", _ASC), ("since", _ASC)]
_INDEXES: list[list[tuple[str, int]]] = [
    [("state", _ASC), ("_id", _DESC)],
    [("owner", _ASC), ("_id", _DESC)],
    [("owner", _ASC), ("state", _ASC), ("_id", _DESC)],
    [("name", _ASC), ("_id", _DESC)],
    [("owner", _ASC), ("name", _ASC), ("_id", _DESC)],
    [("tag_kv.k", _ASC), ("_id", _DESC)],
    [("tag_kv.k", _ASC), ("tag_kv.v", _ASC), ("_id", _DESC)],
    [("owner", _ASC), ("tag_kv.k", _ASC), ("_id", _DESC)],
    [("owner", _ASC), ("tag_kv.k", _ASC), ("tag_kv.v", _ASC), ("_id", _DESC)],
    _BY_QUEUE,
]

_FULL = {"state": 1, "owner": 1, "notes": 1, "doc": 1, "queue": 1, "since": 1}
_MINIMAL = {"state": 1}

#: append_attempt retries this often when a concurrent writer beats it to the first attempt.
_RETRIES = 8


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except DuplicateKeyError as exc:
        raise StoreError(f"{what}: it already exists") from exc
    except PyMongoError as exc:
        raise StoreError(f"{what}: {exc}") from exc


class MongoStore:
    """TaskStore on one MongoDB collection, ``tasks``, with ``_id`` the task id."""

    def __init__(
        self,
        client: pymongo.MongoClient[dict[str, Any]],
        database: str,
        *,
        owns: bool = False,
        default_queue: str = "",
    ) -> None:
        """Use ``database`` through ``client``; ``owns`` makes close() close the client too."""
        self._client = client
        self._owns, self._queue = owns, default_queue
        self._tasks: Collection[dict[str, Any]] = client[database]["tasks"]
        self.ensure_indexes()
        self._migrate()

    @classmethod
    def from_uri(cls, uri: str, database: str, default_queue: str = "") -> MongoStore:
        """Connect to the server at ``uri`` and use ``database``."""
        try:
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                uri, serverSelectionTimeoutMS=10_000
            )
        except (PyMongoError, ValueError) as exc:
            # Never echo the URI: it may carry a password.
            raise StoreError(f"KUEUE_TES_MONGO_URI is not usable: {exc}") from exc
        try:
            return cls(client, database, owns=True, default_queue=default_queue)
        except StoreError:
            client.close()
            raise

    def ensure_indexes(self) -> None:
        """Create the indexes the list filters and the watcher use (a no-op when present)."""
        with _translated("cannot create the task indexes"):
            for keys in _INDEXES:
                self._tasks.create_index(keys)

    def create(self, record: TaskRecord) -> None:
        """Store a new task; its id must be new."""
        doc = {key: value for key, value in record.doc.items() if key != "state"}
        tags: dict[str, Any] = doc.get("tags") or {}
        stored = {
            "_id": record.id,
            "state": State(record.state).value,
            "owner": record.owner,
            "name": doc.get("name"),
            "queue": record.queue or queue_of(doc, self._queue),
            "since": time.time(),
            "tag_kv": [{"k": key, "v": str(value)} for key, value in tags.items()],
            "notes": list(record.notes),
            # Counts doc.logs, so append_attempt learns its index from the same atomic update.
            "attempts": len(doc.get("logs") or []),
            "doc": doc,
        }
        with _translated(f"cannot create task {record.id}"):
            self._tasks.insert_one(stored)

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord | None:
        """Return the task, or None if absent or (when ``owner`` is given) someone else's."""
        query: dict[str, Any] = {"_id": task_id}
        if owner is not None:
            query["owner"] = owner
        with _translated(f"cannot read task {task_id}"):
            found = self._tasks.find_one(query, _FULL)
        return None if found is None else _record(found)

    def list(
        self,
        flt: TaskFilter,
        page_size: int,
        before: str | None = None,
        minimal: bool = False,
    ) -> Page:
        """Return up to ``page_size`` matching tasks with ids below ``before``, newest first.

        With ``minimal`` the records' ``doc`` holds only ``id`` and ``state``, and their
        ``owner`` is the filter's owner (or "") because the hot path reads no more fields.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        query = _query(flt, before)
        with _translated("cannot list tasks"):
            cursor = self._tasks.find(query, _MINIMAL if minimal else _FULL)
            found = list(cursor.sort("_id", _DESC).limit(page_size + 1))
        more = len(found) > page_size
        found = found[:page_size]
        if minimal:
            owner = flt.owner or ""
            records = [
                TaskRecord(
                    id=d["_id"],
                    state=State(d["state"]),
                    owner=owner,
                    doc={"id": d["_id"], "state": d["state"]},
                )
                for d in found
            ]
        else:
            records = [_record(d) for d in found]
        return Page(records=records, more=more)

    def transition(self, task_id: str, to: State, expect: Iterable[State] | None = None) -> bool:
        """Move the task to ``to`` if its state is in ``allowed_from(to, expect)``."""
        allowed = sorted(state.value for state in allowed_from(to, expect))
        if not allowed:
            return False
        with _translated(f"cannot move task {task_id} to {to.value}"):
            result = self._tasks.update_one(
                {"_id": task_id, "state": {"$in": allowed}},
                {"$set": {"state": to.value, "since": time.time()}},
            )
        return result.modified_count == 1

    def append_attempt(self, task_id: str, tasklog: dict[str, Any]) -> int:
        """Append one TES TaskLog (notes first in its system_logs); return its index."""
        what = f"cannot add an attempt to task {task_id}"
        with _translated(what):
            for _ in range(_RETRIES):
                # Later attempts: one $push guarded by "an attempt exists".
                after = self._tasks.find_one_and_update(
                    {"_id": task_id, "doc.logs.0": {"$exists": True}},
                    {"$push": {"doc.logs": tasklog}, "$inc": {"attempts": 1}},
                    projection={"attempts": 1},
                    return_document=pymongo.ReturnDocument.AFTER,
                )
                if after is not None:
                    return int(after["attempts"]) - 1
                current = self._tasks.find_one({"_id": task_id}, {"notes": 1})
                if current is None:
                    raise StoreError(f"{what}: no such task")
                # The first attempt: guarded by "no attempt yet, same notes", so the notes
                # move into exactly one attempt even when two writers race.
                notes: list[str] = current.get("notes") or []
                entry = dict(tasklog)
                if notes:
                    entry["system_logs"] = [*notes, *(entry.get("system_logs") or [])]
                result = self._tasks.update_one(
                    {"_id": task_id, "doc.logs.0": {"$exists": False}, "notes": notes},
                    {"$set": {"doc.logs": [entry], "notes": [], "attempts": 1}},
                )
                if result.matched_count == 1:
                    return 0
        raise StoreError(f"{what}: too many concurrent writers, try again")

    def update_attempt(self, task_id: str, index: int, changes: dict[str, Any]) -> bool:
        """Set top-level fields of the attempt at ``index``; False if it does not exist."""
        if index < 0 or not changes:
            return index >= 0 and self._has_attempt(task_id, index)
        for key in changes:
            if not key or "." in key or key.startswith("$"):
                raise ValueError(f"not a TaskLog field: {key!r}")
        update = {f"doc.logs.{index}.{key}": value for key, value in changes.items()}
        with _translated(f"cannot update attempt {index} of task {task_id}"):
            result = self._tasks.update_one(
                {"_id": task_id, f"doc.logs.{index}": {"$exists": True}}, {"$set": update}
            )
        return result.matched_count == 1

    def _has_attempt(self, task_id: str, index: int) -> bool:
        with _translated(f"cannot read task {task_id}"):
            found = self._tasks.find_one(
                {"_id": task_id, f"doc.logs.{index}": {"$exists": True}}, {"_id": 1}
            )
        return found is not None

    def ids_in_states(self, states: Iterable[State], limit: int = 1000) -> builtins.list[str]:
        """Return ids of tasks in any of ``states``, oldest first (the watcher's sweeps)."""
        values = sorted({State(state).value for state in states})
        if not values or limit < 1:
            return []
        with _translated("cannot list tasks by state"):
            cursor = self._tasks.find({"state": {"$in": values}}, {"_id": 1})
            return [str(d["_id"]) for d in cursor.sort("_id", _ASC).limit(limit)]

    def _migrate(self) -> None:
        """Give tasks stored before queues were kept their queue and since-when (idempotent)."""
        with _translated("cannot add queues to the stored tasks"):
            fields = {"doc.resources.backend_parameters.queue": 1, "doc.creation_time": 1}
            for found in self._tasks.find({"queue": {"$exists": False}}, fields):
                doc = found.get("doc") or {}
                try:
                    since = datetime.fromisoformat(str(doc.get("creation_time"))).timestamp()
                except ValueError:
                    since = 0.0
                self._tasks.update_one(
                    {"_id": found["_id"], "queue": {"$exists": False}},
                    {"$set": {"queue": queue_of(doc, self._queue), "since": since}},
                )

    def counts(self) -> dict[tuple[str, State], int]:
        """Return how many tasks each (LocalQueue, state) holds: a count over one index that
        reads no task document."""
        with _translated("cannot count tasks"):
            found = self._tasks.aggregate(
                [
                    {"$match": {"state": {"$in": [state.value for state in State]}}},
                    {"$group": {"_id": {"q": "$queue", "s": "$state"}, "n": {"$sum": 1}}},
                ],
                hint=_index_name(_BY_QUEUE),
            )
            return {(str(g["_id"]["q"]), State(g["_id"]["s"])): int(g["n"]) for g in found}

    def queues(self, finished_after: float) -> builtins.list[QueueStats]:
        """Return every LocalQueue's counts, recent ends and longest wait, from one index."""
        by_queue: dict[str, dict[State, int]] = {}
        for (queue, state), n in self.counts().items():
            by_queue.setdefault(queue, {})[state] = n
        out = []
        with _translated("cannot summarise the queues"):
            for queue, states in sorted(by_queue.items()):
                ended = [s.value for s in TERMINAL if s in states]
                recent = {
                    "state": {"$in": ended},
                    "queue": queue,
                    "since": {"$gte": finished_after},
                }
                finished = self._tasks.count_documents(recent) if ended else 0
                oldest = None
                if states.get(State.QUEUED):
                    waiting = {"state": State.QUEUED.value, "queue": queue}
                    found = self._tasks.find_one(waiting, _FULL, sort=[("since", _ASC)])
                    oldest = None if found is None else _record(found)
                out.append(QueueStats(queue, states, finished, oldest))
        return out

    def close(self) -> None:
        """Close the client if this store opened it."""
        if self._owns:
            self._client.close()


def _query(flt: TaskFilter, before: str | None) -> dict[str, Any]:
    """Return the MongoDB query for ``flt`` below the cursor ``before``."""
    query: dict[str, Any] = {}
    if flt.owner is not None:
        query["owner"] = flt.owner
    if flt.state is not None:
        query["state"] = flt.state.value
    if flt.name_prefix:
        # An anchored literal prefix: MongoDB turns it into an index range.
        query["name"] = {"$regex": "^" + re.escape(flt.name_prefix)}
    tags: list[dict[str, Any]] = [
        {"tag_kv": {"$elemMatch": {"k": key, "v": value}}} if value else {"tag_kv.k": key}
        for key, value in flt.tags.items()
    ]
    if tags:
        query["$and"] = tags
    if before:
        query["_id"] = {"$lt": before}
    return query


def _record(found: dict[str, Any]) -> TaskRecord:
    doc: dict[str, Any] = {"id": found["_id"], "state": found["state"]}
    doc.update(found.get("doc") or {})
    return TaskRecord(
        id=str(found["_id"]),
        state=State(found["state"]),
        owner=str(found.get("owner", "")),
        doc=doc,
        notes=list(found.get("notes") or []),
        queue=str(found.get("queue") or ""),
        since=found.get("since"),
    )


def _index_name(keys: list[tuple[str, int]]) -> str:
    return "_".join(f"{name}_{direction}" for name, direction in keys)
