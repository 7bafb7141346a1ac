"""The ASGI layer in front of Connexion's routing: path fix-ups and the GetTask fast path.

GetTask is what every TES client polls, many times per task. Connexion's middleware stack and
the ASGI-to-WSGI bridge cost ten times the work of the lookup itself (docs/performance.md), so
``GET /tasks/{id}`` is answered here, with the same checks and answers as the spec-driven
route: the view parameter is validated against the spec's enum, unknown ids are 404.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from connexion.lifecycle import ConnexionResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app import problems, views
from app.models import View
from app.services import Services
from app.store.base import StoreError

_TASK_PATH = re.compile(r"^/(?:ga4gh/tes/v1|v1)/tasks/([^/:]+)$")
_VIEWS = [view.value for view in View]


class FrontDoor:
    """Rewrite legacy paths, refuse unroutable ones, and serve GetTask directly."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        """Wrap the rest of the Connexion stack."""
        self.app, self.services = app, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI event."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/v1/tasks/service-info":
            # py-tes 0.4 asks here; routing would read it as GetTask("service-info").
            scope = dict(scope, path="/v1/service-info", raw_path=b"/v1/service-info")
        elif "\n" in path:
            # No route matches a line break; the framework's own router would then call a
            # handler outside Connexion's context. Answer here.
            await send_response(problems.problem(404, "Not Found", "no such resource"), send)
            return
        elif scope.get("method") == "GET" and (match := _TASK_PATH.match(path)):
            await send_response(self._get_task(match.group(1), scope), send)
            return
        await self.app(scope, receive, send)

    def _get_task(self, task_id: str, scope: Scope) -> ConnexionResponse:
        query = dict(
            parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        )
        view = query.get("view", View.MINIMAL.value)
        if view not in _VIEWS:
            return problems.problem(
                400, "Bad Request", f"view: {view!r} is not one of {_VIEWS}", field="view"
            )
        try:
            # A point read on an index; done inline, as a thread hop would cost more than it.
            record = self.services.store.get(task_id)
        except StoreError:
            return problems.problem(
                503, "Service Unavailable", "the task store is unavailable; retry shortly"
            )
        if record is None:
            return problems.not_found(task_id)
        body = json.dumps(views.render(record.doc, View(view)))
        return ConnexionResponse(200, "application/json", "application/json", body=body)


async def send_response(response: ConnexionResponse, send: Send) -> None:
    """Send a complete response."""
    body: Any = response.body
    data = body.encode() if isinstance(body, str) else bytes(body)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [
                (b"content-type", str(response.content_type).encode()),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
