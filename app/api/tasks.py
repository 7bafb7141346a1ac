"""CreateTask, GetTask, ListTasks and CancelTask."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connexion.lifecycle import ConnexionResponse
from pydantic import ValidationError

from app import auth, ids, policy, problems, services, validation, views
from app.models import State, TaskIn, View
from app.queue import QueueError
from app.store.base import TaskFilter, TaskRecord

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 256
MAX_PAGE_SIZE = 2047
_CANCELABLE = (State.QUEUED, State.INITIALIZING, State.RUNNING)

Json = dict[str, Any]


#: What a CreateTask body that is JSON ``null`` is told.
NO_TASK = "body: a task is required"


def too_large(max_bytes: int) -> str:
    """Return what a CreateTask body over ``max_bytes`` is told."""
    return f"body: over the limit of {max_bytes} bytes; move large inputs behind a url"


def parse_body(raw: bytes) -> Any:
    """Return the JSON value of a request body; ValueError says why it is not JSON."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body: not valid JSON ({exc})") from exc


def now_rfc3339() -> str:
    """Return the current UTC time as RFC 3339 with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def create_task(body: Any) -> Json | ConnexionResponse:
    """Validate, route, store as QUEUED (owned by the caller), then enqueue the submission."""
    svc = services.current()
    principal = auth.current()
    record = new_task(svc, principal, body)
    if isinstance(record, ConnexionResponse):
        return record
    svc.intake.admit_blocking(record)
    created(record, principal)
    return {"id": record.id}


def new_task(
    svc: services.Services, principal: auth.Principal, body: Any
) -> TaskRecord | ConnexionResponse:
    """Return the QUEUED record of a CreateTask ``body``, or the 400 or 403 that refuses it.

    Both routes of CreateTask (the front door and the spec-driven one) call this.
    """
    envelope = svc.routes.envelope(principal)
    if envelope is None:
        return problems.problem(
            403,
            "Forbidden",
            f"'{principal.name}' may not create tasks here: no queue route of this service "
            "matches this principal or its groups; ask the operator for one",
        )
    if not isinstance(body, dict):
        return problems.bad_request(validation.InvalidTask("body", "must be a JSON object"))
    try:
        task = TaskIn.model_validate(body)
        notes = validation.check_task(
            task,
            svc.settings.backend_parameters,
            svc.settings.max_content_bytes,
            svc.settings,
            envelope,
        )
    except ValidationError as exc:
        return problems.bad_request(validation.from_pydantic(exc))
    except validation.InvalidTask as exc:
        return problems.bad_request(exc)
    task_id = ids.new_id()
    doc = task.model_dump(mode="json", exclude_none=True)
    doc.update(id=task_id, state=State.QUEUED.value, creation_time=now_rfc3339())
    queue = policy.local_queue(doc.get("resources"), svc.settings)  # as the worker labels it
    return TaskRecord(task_id, State.QUEUED, principal.name, doc, notes, queue)


def created(record: TaskRecord, principal: auth.Principal) -> None:
    """Log a task just stored and enqueued."""
    for note in record.notes:
        log.info("task %s: %s", record.id, note)
    log.info("task %s: created by %s", record.id, principal.name)


def get_task(id: str, view: str = View.MINIMAL.value) -> Json | ConnexionResponse:
    """Return one task in the requested view (the front door answers first; same rules)."""
    svc = services.current()
    record = svc.store.get(id, owner=auth.current().owner_filter())
    if record is None:
        return problems.not_found(id)
    return views.render(record.doc, View(view))


def _token(task_id: str) -> str:
    return base64.urlsafe_b64encode(task_id.encode()).decode().rstrip("=")


def _untoken(token: str) -> str:
    try:
        task_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        task_id = ""
    if not ids.is_valid(task_id):
        raise validation.InvalidTask(
            "page_token", "not a token this server issued; pass next_page_token unchanged"
        )
    return task_id


def _tag_filter(tag_key: list[str] | None, tag_value: list[str] | None) -> dict[str, str]:
    keys, values = tag_key or [], tag_value or []
    if len(values) > len(keys):
        raise validation.InvalidTask("tag_value", "more tag_value than tag_key parameters")
    return {key: values[i] if i < len(values) else "" for i, key in enumerate(keys)}


def list_tasks(
    name_prefix: str | None = None,
    state: str | None = None,
    tag_key: list[str] | None = None,
    tag_value: list[str] | None = None,
    page_size: int | None = None,
    page_token: str | None = None,
    view: str = View.MINIMAL.value,
) -> Json | ConnexionResponse:
    """List tasks newest first, filtered, one page at a time."""
    query = ListQuery(name_prefix, state, tag_key, tag_value, page_size, page_token, view)
    return list_page(services.current(), auth.current(), query)


@dataclass(frozen=True)
class ListQuery:
    """The ListTasks parameters, as given (already of the spec's types)."""

    name_prefix: str | None = None
    state: str | None = None
    tag_key: list[str] | None = None
    tag_value: list[str] | None = None
    page_size: int | None = None
    page_token: str | None = None
    view: str = View.MINIMAL.value


def list_page(
    svc: services.Services, principal: auth.Principal, query: ListQuery, rendered: bool = False
) -> Any:
    """Answer ListTasks for ``principal``: the page's JSON, or a 400 naming the parameter.

    With ``rendered`` the page is JSON text, joined from the tasks' stored views.
    """
    size = DEFAULT_PAGE_SIZE if query.page_size is None else query.page_size
    try:
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise validation.InvalidTask(
                "page_size", f"{size} is out of range; use 1 to {MAX_PAGE_SIZE}"
            )
        state = query.state
        flt = TaskFilter(
            name_prefix=query.name_prefix or None,
            # The spec gives the state parameter tesState's default, UNKNOWN, which Connexion
            # fills in when absent; no task is ever UNKNOWN, so it means "any state".
            state=State(state) if state and state != State.UNKNOWN.value else None,
            tags=_tag_filter(query.tag_key, query.tag_value),
            owner=principal.owner_filter(),
        )
        before = _untoken(query.page_token) if query.page_token else None
    except validation.InvalidTask as exc:
        return problems.bad_request(exc)
    chosen = View(query.view)
    if rendered:
        texts = svc.store.list_rendered(flt, size, before=before, view=chosen)
        last = texts.last_id if texts.more else None
        return views.page_json(texts.tasks, _token(last) if last else None)
    page = svc.store.list(flt, size, before=before, minimal=chosen is View.MINIMAL)
    body: Json = {"tasks": [views.render(r.doc, chosen) for r in page.records]}
    if page.more and page.records:
        body["next_page_token"] = _token(page.records[-1].id)
    return body


def cancel_task(id: str) -> Json | ConnexionResponse:
    """Move an active task to CANCELING and enqueue the cancel; terminal tasks are left as is."""
    done = cancel(services.current(), auth.current(), id)
    return problems.not_found(id) if done is None else done


def cancel(svc: services.Services, principal: auth.Principal, id: str) -> Json | None:
    """CancelTask for ``principal`` (also the dashboard's): ``{}``, or None for a 404."""
    # Another owner's task is 404 like an unknown id, so ids do not leak.
    record = svc.store.get(id, owner=principal.owner_filter())
    if record is None:
        return None
    if svc.store.transition(id, State.CANCELING, expect=_CANCELABLE):
        log.info("task %s: CANCELING (asked by %s)", id, principal.name)
    try:
        # Enqueue also when the task already was CANCELING: a lost cancel is then retried.
        if record.state in _CANCELABLE or record.state is State.CANCELING:
            svc.queue.cancel(id)
    except QueueError as exc:
        log.warning("task %s: %s; the sweep will cancel it later", id, exc)
    return {}
