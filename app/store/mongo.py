"""The production task store on MongoDB: one document per task, each change one atomic update."""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from app import views
from app.models import State, View
from app.store import mongo_queues
from app.store.base import (
    Page,
    QueueStats,
    RenderedPage,
    StoreError,
    TaskFilter,
    TaskRecord,
    add_attempt,
    allowed_from,
    change_attempt,
    queue_of,
)

_ASC, _DESC = pymongo.ASCENDING, pymongo.DESCENDING

#: Every list filter (alone and under an owner) ends in _id descending, so one index scan
#: yields a page newest first; the name range is the exception and the planner may sort.
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
    mongo_queues.BY_QUEUE,
]

_FULL = {"state": 1, "owner": 1, "notes": 1, "doc": 1, "queue": 1, "since": 1}
_MINIMAL = {"state": 1}
#: What a rendered read needs: the stored view, and the doc only where there is none.
_VIEWS = {
    View.MINIMAL: {"state": 1, "owner": 1},
    View.BASIC: {"state": 1, "owner": 1, "basic_view": 1},
    View.FULL: {"state": 1, "owner": 1, "full_view": 1},
}
_VIEW_FIELD = {View.BASIC: "basic_view", View.FULL: "full_view"}

#: An attempt write retries this often when a concurrent writer changes the task under it.
_RETRIES = 8
#: The marker, in the ``meta`` collection, that every task has its stored views.
_RENDERED = "rendered-views"


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
        with _translated("cannot add queues to the stored tasks"):
            mongo_queues.migrate(self._tasks, default_queue)

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
        [error] = self.create_many([record])
        if error is not None:
            raise error

    def create_many(self, records: Sequence[TaskRecord]) -> builtins.list[StoreError | None]:
        """Store new tasks in one request; per record, its error (an id that exists, say)."""
        if not records:
            return []
        what = f"cannot create task {records[0].id}" if len(records) == 1 else "cannot create tasks"
        try:
            with _translated(what):
                stored = [_stored(record, self._queue) for record in records]
                self._tasks.insert_many(stored, ordered=False)
        except StoreError as exc:
            if not isinstance(exc.__cause__, BulkWriteError):
                return [exc] * len(records)
            failed = {e["index"]: e for e in exc.__cause__.details.get("writeErrors") or ()}
            return [
                None
                if i not in failed
                else StoreError(f"cannot create task {record.id}: {failed[i].get('errmsg')}")
                for i, record in enumerate(records)
            ]
        return [None] * len(records)

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord | None:
        """Return the task, or None if absent or (when ``owner`` is given) someone else's."""
        query: dict[str, Any] = {"_id": task_id}
        if owner is not None:
            query["owner"] = owner
        with _translated(f"cannot read task {task_id}"):
            found = self._tasks.find_one(query, _FULL)
        return None if found is None else _record(found)

    def get_rendered(self, task_id: str, view: View, owner: str | None = None) -> str | None:
        """Return the task's JSON text in ``view`` (as ``get`` finds it), from its stored views."""
        query: dict[str, Any] = {"_id": task_id}
        if owner is not None:
            query["owner"] = owner
        with _translated(f"cannot read task {task_id}"):
            found = self._tasks.find_one(query, _VIEWS[view])
            return None if found is None else self._rendered([found], view)[0]

    def list_rendered(
        self, flt: TaskFilter, page_size: int, before: str | None = None, view: View = View.MINIMAL
    ) -> RenderedPage:
        """Return ``list``'s page as JSON texts in ``view``, from the tasks' stored views."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        with _translated("cannot list tasks"):
            cursor = self._tasks.find(_query(flt, before), _VIEWS[view])
            found = list(cursor.sort("_id", _DESC).limit(page_size + 1))
            page = found[:page_size]
            tasks = self._rendered(page, view)
        last = str(page[-1]["_id"]) if page else None
        return RenderedPage(tasks=tasks, last_id=last, more=len(found) > page_size)

    def _rendered(self, found: builtins.list[dict[str, Any]], view: View) -> builtins.list[str]:
        """Return the JSON texts of ``found`` tasks; render those stored without views."""
        if view is View.MINIMAL:
            return [views.task_json(str(d["_id"]), d["state"]) for d in found]
        field = _VIEW_FIELD[view]
        missing = [d["_id"] for d in found if d.get(field) is None]
        docs: dict[str, Any] = {}
        if missing:  # stored by an older release and not rendered yet
            for d in self._tasks.find({"_id": {"$in": missing}}, {"doc": 1}):
                docs[d["_id"]] = views.fragments(d.get("doc") or {})
        index = 0 if view is View.BASIC else 1
        return [
            views.task_json(
                str(d["_id"]),
                d["state"],
                d[field] if d.get(field) is not None else docs[d["_id"]][index],
            )
            for d in found
        ]

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
        index = -1

        def append(doc: dict[str, Any], notes: builtins.list[str]) -> builtins.list[str]:
            nonlocal index
            index, kept = add_attempt(doc, notes, tasklog)
            return kept

        if not self._rewrite(task_id, append, f"cannot add an attempt to task {task_id}"):
            raise StoreError(f"cannot add an attempt to task {task_id}: no such task")
        return index

    def update_attempt(self, task_id: str, index: int, changes: dict[str, Any]) -> bool:
        """Set top-level fields of the attempt at ``index``; False if it does not exist."""

        def update(doc: dict[str, Any], notes: builtins.list[str]) -> builtins.list[str] | None:
            return notes if change_attempt(doc, index, changes) else None

        return self._rewrite(task_id, update, f"cannot update attempt {index} of task {task_id}")

    def _rewrite(
        self,
        task_id: str,
        change: Callable[[dict[str, Any], builtins.list[str]], builtins.list[str] | None],
        what: str,
    ) -> bool:
        """Apply ``change(doc, notes)`` (it returns the notes to keep, or None: no change) and
        store the doc with its views, if no other writer changed the task meanwhile (``rev``).

        Returns False when the task does not exist or ``change`` made none.
        """
        with _translated(what):
            for _ in range(_RETRIES):
                found = self._tasks.find_one({"_id": task_id}, {"doc": 1, "notes": 1, "rev": 1})
                if found is None:
                    return False
                doc: dict[str, Any] = found.get("doc") or {}
                notes = change(doc, list(found.get("notes") or []))
                if notes is None:
                    return False
                basic, full = views.fragments(doc)
                # Documents of older releases have no rev: they match as "no rev" once.
                rev = found.get("rev")
                guard = {"_id": task_id, "rev": rev if rev is not None else {"$exists": False}}
                stored = {"doc": doc, "notes": notes, "basic_view": basic, "full_view": full}
                result = self._tasks.update_one(guard, {"$set": stored, "$inc": {"rev": 1}})
                if result.matched_count == 1:
                    return True
        raise StoreError(f"{what}: too many concurrent writers, try again")

    def render_pending(self, limit: int = 1000) -> int:
        """Store the views of up to ``limit`` tasks stored without them (by an older release)."""
        meta = self._tasks.database["meta"]
        done = 0
        with _translated("cannot render stored tasks"):
            if meta.find_one({"_id": _RENDERED}) is not None:
                return 0
            query = {"basic_view": {"$exists": False}}
            for found in self._tasks.find(query, {"doc": 1, "rev": 1}).limit(limit):
                basic, full = views.fragments(found.get("doc") or {})
                rev = found.get("rev")
                guard = {"_id": found["_id"], "basic_view": {"$exists": False}}
                guard["rev"] = rev if rev is not None else {"$exists": False}
                update = {"$set": {"basic_view": basic, "full_view": full}}
                done += self._tasks.update_one(guard, update).modified_count
            if done == 0 and self._tasks.find_one(query, {"_id": 1}) is None:
                meta.update_one({"_id": _RENDERED}, {"$set": {"done": True}}, upsert=True)
        return done

    def ids_in_states(self, states: Iterable[State], limit: int = 1000) -> builtins.list[str]:
        """Return ids of tasks in any of ``states``, oldest first (the watcher's sweeps)."""
        values = sorted({State(state).value for state in states})
        if not values or limit < 1:
            return []
        with _translated("cannot list tasks by state"):
            cursor = self._tasks.find({"state": {"$in": values}}, {"_id": 1})
            return [str(d["_id"]) for d in cursor.sort("_id", _ASC).limit(limit)]

    def counts(self) -> dict[tuple[str, State], int]:
        """Return how many tasks each (LocalQueue, state) holds, from one index."""
        with _translated("cannot count tasks"):
            return mongo_queues.counts(self._tasks)

    def queues(self, finished_after: float) -> builtins.list[QueueStats]:
        """Return every LocalQueue's counts, recent ends and longest wait, from one index."""
        with _translated("cannot summarise the queues"):
            return mongo_queues.queues(self._tasks, finished_after, _FULL, _record)

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


def _stored(record: TaskRecord, default_queue: str) -> dict[str, Any]:
    """Return the MongoDB document of a new task."""
    doc = {key: value for key, value in record.doc.items() if key != "state"}
    tags: dict[str, Any] = doc.get("tags") or {}
    basic, full = views.fragments(doc)
    return {
        "_id": record.id,
        "state": State(record.state).value,
        "owner": record.owner,
        "name": doc.get("name"),
        "queue": record.queue or queue_of(doc, default_queue),
        "since": time.time(),
        "tag_kv": [{"k": key, "v": str(value)} for key, value in tags.items()],
        "notes": list(record.notes),
        "rev": 0,  # every rewrite of doc checks and bumps it (_rewrite)
        "doc": doc,
        "basic_view": basic,
        "full_view": full,
    }


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
