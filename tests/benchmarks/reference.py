"""The reference servers of the benchmarks: bare Starlette apps, served as ``kueue-tes api``.

* ``constant``: one route returning a constant small JSON body (the floor of the stack).
* ``create``: CreateTask the plain way, doing the same work as ours: the same Pydantic model
  and checks (``TaskIn``, ``validation.check_task``), the same durable insert (one
  ``BEGIN IMMEDIATE`` transaction per task into an SQLite file of our schema, WAL,
  ``synchronous = NORMAL``, the same row with its stored views), the same RQ enqueue
  (``Queue.enqueue`` of ``worker.jobs.submit`` with the same job id and TTLs) on the same
  Redis, before answering ``{"id": ...}``. Inline in the handler, as a bare endpoint does.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

import redis
from pydantic import ValidationError
from rq import Queue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app import ids, validation, views
from app.api.tasks import now_rfc3339
from app.models import State, TaskIn
from app.settings import Settings
from app.store.sqlite import SqliteStore

#: The reference body: the size and shape of a GetTask MINIMAL answer.
REFERENCE_BODY = {"id": "01hzzzzzzzzzzzzzzzzzzzzzzz", "state": "COMPLETE"}

_INSERT = (
    "INSERT INTO tasks (id, state, owner, name, notes, doc, basic_view, full_view)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_TAG = "INSERT INTO tags (task_id, key, value) VALUES (?, ?, ?)"


async def _constant(request: Request) -> JSONResponse:
    """Return the constant body, whatever the id."""
    return JSONResponse(REFERENCE_BODY)


def constant_app() -> Starlette:
    """Return the bare Starlette app: one route, one constant small JSON body."""
    return Starlette(routes=[Route("/ga4gh/tes/v1/tasks/{id}", _constant, methods=["GET"])])


def create_app(settings: Settings) -> Starlette:
    """Return the bare CreateTask app on the store file and Redis that ``settings`` name."""
    SqliteStore(settings.store_path()).close()  # our schema, created once
    local = threading.local()
    queue = Queue(settings.rq_queue, connection=redis.Redis.from_url(str(settings.redis_url)))

    def db() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "db", None)
        if conn is None:
            conn = sqlite3.connect(settings.store_path(), timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            local.db = conn
        return conn

    async def create(request: Request) -> JSONResponse:
        try:
            task = TaskIn.model_validate(json.loads(await request.body()))
            notes = validation.check_task(
                task, settings.backend_parameters, settings.max_content_bytes, settings
            )
        except (ValueError, ValidationError, validation.InvalidTask) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        task_id = ids.new_id()
        doc: dict[str, Any] = task.model_dump(mode="json", exclude_none=True)
        doc.update(id=task_id, creation_time=now_rfc3339())
        basic, full = views.fragments(doc)
        conn = db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = (task_id, State.QUEUED.value, "anonymous", doc.get("name"), json.dumps(notes))
            conn.execute(_INSERT, (*row, json.dumps(doc), basic, full))
            tags = [(task_id, k, str(v)) for k, v in (doc.get("tags") or {}).items()]
            conn.executemany(_TAG, tags)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        queue.enqueue(
            "worker.jobs.submit",
            task_id,
            job_id=f"submit-{task_id}",
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
            description=f"submit {task_id}",
        )
        return JSONResponse({"id": task_id})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({})  # what the benchmark polls until the server answers

    return Starlette(
        routes=[
            Route("/ga4gh/tes/v1/tasks", create, methods=["POST"]),
            Route("/ga4gh/tes/v1/service-info", ready, methods=["GET"]),
        ]
    )
