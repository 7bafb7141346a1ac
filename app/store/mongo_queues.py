"""What the MongoDB store keeps per LocalQueue: the index, the migration of older documents,
and the queries of the metrics and the dashboard's queues page (the store translates their
errors).

Each task document carries its ``queue`` and ``since`` (when it entered its state); counts per
(queue, state), recent ends and the longest wait are all read from the (state, queue, since)
index, without reading task documents.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from app.models import State
from app.store.base import TERMINAL, QueueStats, TaskRecord, queue_of

#: Counts per queue and state, recent ends and the longest wait: all read from this index.
BY_QUEUE = [("state", 1), ("queue", 1), ("since", 1)]


def migrate(tasks: Any, default_queue: str) -> None:
    """Give tasks stored before queues were kept their queue and since-when (idempotent)."""
    fields = {"doc.resources.backend_parameters.queue": 1, "doc.creation_time": 1}
    for found in tasks.find({"queue": {"$exists": False}}, fields):
        doc = found.get("doc") or {}
        try:
            since = datetime.fromisoformat(str(doc.get("creation_time"))).timestamp()
        except ValueError:
            since = 0.0
        tasks.update_one(
            {"_id": found["_id"], "queue": {"$exists": False}},
            {"$set": {"queue": queue_of(doc, default_queue), "since": since}},
        )


def counts(tasks: Any) -> dict[tuple[str, State], int]:
    """Return how many tasks each (LocalQueue, state) holds, counted over :data:`BY_QUEUE`."""
    found = tasks.aggregate(
        [
            {"$match": {"state": {"$in": [state.value for state in State]}}},
            {"$group": {"_id": {"q": "$queue", "s": "$state"}, "n": {"$sum": 1}}},
        ],
        hint="_".join(f"{name}_{direction}" for name, direction in BY_QUEUE),
    )
    return {(str(g["_id"]["q"]), State(g["_id"]["s"])): int(g["n"]) for g in found}


def queues(
    tasks: Any,
    finished_after: float,
    fields: dict[str, int],
    record: Callable[[dict[str, Any]], TaskRecord],
) -> list[QueueStats]:
    """Return every LocalQueue's counts, recent ends and longest wait, from one index."""
    by_queue: dict[str, dict[State, int]] = {}
    for (queue, state), n in counts(tasks).items():
        by_queue.setdefault(queue, {})[state] = n
    out = []
    for queue, states in sorted(by_queue.items()):
        ended = [s.value for s in TERMINAL if s in states]
        recent = {"state": {"$in": ended}, "queue": queue, "since": {"$gte": finished_after}}
        finished = tasks.count_documents(recent) if ended else 0
        oldest: TaskRecord | None = None
        if states.get(State.QUEUED):
            waiting = {"state": State.QUEUED.value, "queue": queue}
            found = tasks.find_one(waiting, fields, sort=[("since", 1)])
            oldest = None if found is None else record(found)
        out.append(QueueStats(queue, states, finished, oldest))
    return out
