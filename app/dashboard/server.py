"""The dashboard at /dashboard/: an ASGI layer behind the front door, so behind the same auth.

The front door (app/frontdoor.py) has authenticated the request and put its principal in the
scope before this layer sees it; the pages then read exactly what the API would give that
principal: ListTasks with the same filters and paging, GetTask FULL (another owner's task is a
404), CancelTask. Only the queues page shows counts across owners, as Kueue shows a LocalQueue's
status to everyone who may use it; it links only the tasks the principal may open.

Cancel is a form POST. Browsers send Basic credentials with any request to this origin, even
one started by another site, so a POST must come from a page of this origin: its ``Origin``
(or, when a browser sends none, its ``Referer``) must name this host (docs/operations.md).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from app import auth, views
from app.api import tasks
from app.dashboard import pages
from app.models import View
from app.services import Services
from app.store.base import TERMINAL, StoreError

log = logging.getLogger(__name__)

_TASK = re.compile(r"^/dashboard/tasks/([^/]+)$")
_CANCEL = re.compile(r"^/dashboard/tasks/([^/]+)/cancel$")
_HOUR = 3600.0
_RUNNING = ("INITIALIZING", "RUNNING", "CANCELING")


class Dashboard:
    """Serve /dashboard/…; pass everything else on."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        """Wrap the rest of the stack."""
        self.app, self.services = app, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI event."""
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == pages.ROOT or path.startswith("/dashboard/")):
            await self.app(scope, receive, send)
            return
        principal = scope.get(auth.SCOPE_KEY)
        if not isinstance(principal, auth.Principal):  # fail closed without the front door
            await _send(send, 401, pages.error_page(401, "not authenticated"))
            return
        method = scope.get("method")
        try:
            if method == "POST" and (match := _CANCEL.match(path)):
                await self._cancel(scope, send, principal, match.group(1))
                return
            if method not in ("GET", "HEAD"):
                await _send(send, 405, pages.error_page(405, "use GET"), [("allow", "GET")])
                return
            status, html = await anyio.to_thread.run_sync(self._render, scope, principal)
        except StoreError as exc:
            log.error("dashboard: store error on %s: %s", path, exc)
            status, html = 503, pages.error_page(503, "the task store is unavailable; retry")
        await _send(send, status, html)

    def _render(self, scope: Scope, principal: auth.Principal) -> tuple[int, str]:
        path = scope["path"]
        now = time.time()
        if path in (pages.ROOT, pages.ROOT + "/"):
            return self._list(scope, principal, now)
        if path == "/dashboard/queues":
            return 200, pages.page(
                "Queues", self._queues(principal, now), live=True, active="Queues"
            )
        if match := _TASK.match(path):
            record = self.services.store.get(match.group(1), owner=principal.owner_filter())
            if record is None:
                return 404, pages.error_page(404, f"no task with id '{match.group(1)}'")
            task = views.render(record.doc, View.FULL)
            cancel = f"/dashboard/tasks/{record.id}/cancel"
            body = pages.task_page(task, now, cancel)
            live = record.state not in TERMINAL
            return 200, pages.page(task.get("name") or record.id, body, live=live, active="Tasks")
        return 404, pages.error_page(404, "no such page")

    def _list(self, scope: Scope, principal: auth.Principal, now: float) -> tuple[int, str]:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        keys, values = [], []
        for item in (query.get("tags") or "").split():
            key, _, value = item.partition("=")
            keys.append(key)
            values.append(value)
        try:
            size = int(query.get("page_size") or 50)
        except ValueError:
            size = 50
        asked = tasks.ListQuery(
            name_prefix=query.get("name_prefix") or None,
            state=query.get("state") or None,
            tag_key=keys or None,
            tag_value=values or None,
            page_size=size,
            page_token=query.get("page_token") or None,
            view=View.BASIC.value,
        )
        if asked.state is not None and asked.state not in pages.STATES:
            return 400, pages.error_page(400, f"state: {asked.state!r} is not a TES state")
        result = tasks.list_page(self.services, principal, asked)
        if not isinstance(result, dict):  # a 400 problem: show its detail
            detail = _detail(result)
            return 400, pages.error_page(400, detail)
        # A BASIC page has no system logs: read why each waiting task waits (a point read each).
        reasons = {}
        for task in result["tasks"]:
            if task["state"] == "QUEUED":
                record = self.services.store.get(task["id"], owner=principal.owner_filter())
                why = pages.reason(record.doc) if record is not None else None
                if why:
                    reasons[task["id"]] = why
        token = result.get("next_page_token")
        body = pages.task_list(result["tasks"], query, token, now, reasons)
        return 200, pages.page("Tasks", body, live=True, active="Tasks")

    def _queues(self, principal: auth.Principal, now: float) -> str:
        rows = []
        for stats in self.services.store.queues(now - _HOUR):
            counts = {state.value: n for state, n in stats.states.items()}
            oldest = stats.oldest
            mine = oldest is not None and (principal.admin or oldest.owner == principal.name)
            rows.append(
                {
                    "queue": stats.queue,
                    "queued": counts.get("QUEUED", 0),
                    "running": sum(counts.get(s, 0) for s in _RUNNING),
                    "finished": stats.finished,
                    "oldest_since": oldest.since if oldest is not None else None,
                    "oldest_link": f"/dashboard/tasks/{oldest.id}" if mine and oldest else None,
                    "reason": pages.reason(oldest.doc) if oldest is not None else None,
                }
            )
        return pages.queues_page(rows, now)

    async def _cancel(
        self, scope: Scope, send: Send, principal: auth.Principal, task_id: str
    ) -> None:
        if not _same_origin(scope):
            log.warning("dashboard: cross-site cancel of %s refused", task_id)
            html = pages.error_page(403, "a cancel must come from this dashboard's own pages")
            await _send(send, 403, html)
            return
        outcome = await anyio.to_thread.run_sync(tasks.cancel, self.services, principal, task_id)
        if outcome is None:
            await _send(send, 404, pages.error_page(404, f"no task with id '{task_id}'"))
            return
        where = f"/dashboard/tasks/{task_id}"
        await _send(send, 303, "", [("location", where)])


def _detail(response: Any) -> str:
    try:
        return str(json.loads(response.body).get("detail"))
    except (ValueError, AttributeError):
        return "bad request"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _same_origin(scope: Scope) -> bool:
    """Tell whether a POST comes from a page of this host (Origin, else Referer)."""
    host = _header(scope, b"host")
    source = _header(scope, b"origin") or _header(scope, b"referer")
    if not host or not source or source == "null":
        return False
    return urlsplit(source).netloc == host


async def _send(send: Send, status: int, html: str, extra: Iterable[tuple[str, str]] = ()) -> None:
    body = html.encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        # The pages embed nothing from elsewhere and must not be framed (clickjacking).
        (
            b"content-security-policy",
            b"default-src 'self'; style-src 'unsafe-inline'; "
            b"script-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
    ]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
