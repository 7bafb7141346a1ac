"""The ASGI layer in front of Connexion's routing: path fix-ups, auth, the fast paths.

Every request but service-info (and the spec) is authenticated here (docs/auth.md): a 401
with ``WWW-Authenticate`` when credentials are missing or wrong, else the principal is put in
the scope for the handlers. GetTask and ListTasks are what TES clients poll, many times per task,
and CreateTask what they send in bursts. Connexion's middleware stack and the ASGI-to-WSGI
bridge cost ten times the work of the lookup itself (docs/performance.md), so
``GET /tasks/{id}``, ``GET /tasks`` and ``POST /tasks`` (with a JSON body) are answered here,
with the same checks and answers as the spec-driven routes: parameters are validated against
the spec's enums and types, unknown ids and other owners' tasks are 404, bodies are parsed and
validated by the same code. Tasks are read from their stored views (app.views.task_json).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
from connexion.lifecycle import ConnexionResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import auth, problems
from app.api import tasks
from app.models import State, View
from app.services import Services
from app.store.base import StoreError

log = logging.getLogger(__name__)

_TASK_PATH = re.compile(r"^/(?:ga4gh/tes/v1|v1)/tasks/([^/:]+)$")
_TASKS_PATH = re.compile(r"^/(?:ga4gh/tes/v1|v1)/tasks$")
_VIEWS = [view.value for view in View]
_STATES = [state.value for state in State]
#: Paths anyone may read: clients look at service-info before they have credentials.
PUBLIC = frozenset(
    f"{base}/{name}"
    for base in ("/ga4gh/tes/v1", "/v1")
    for name in ("service-info", "openapi.json")
)


class FrontDoor:
    """Rewrite legacy paths, refuse unroutable ones, authenticate, serve the fast paths."""

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
            path = "/v1/service-info"
        elif "\n" in path:
            # No route matches a line break; the framework's own router would then call a
            # handler outside Connexion's context. Answer here.
            await send_response(problems.problem(404, "Not Found", "no such resource"), send)
            return
        if path not in PUBLIC:
            authenticator = self.services.auth
            # The common case, a credential already checked, stays synchronous: no await.
            header = None if authenticator.is_open else _header(scope, b"authorization")
            principal = authenticator.cached(header)
            if principal is None:
                principal = await self._authenticate(scope, header, send)
                if principal is None:
                    return
            scope[auth.SCOPE_KEY] = principal
            method = scope.get("method")
            if not self.services.fast_paths:
                pass
            elif method == "GET" and (match := _TASK_PATH.match(path)):
                await send_response(self._get_task(match.group(1), scope, principal), send)
                return
            elif method == "GET" and _TASKS_PATH.match(path):
                await send_response(self._list_tasks(scope, principal), send)
                return
            elif method == "POST" and _TASKS_PATH.match(path) and _is_json(scope):
                answer, receive = await self._create_task(receive, principal)
                if answer is not None:
                    await send_response(answer, send)
                    return
        await self.app(scope, receive, send)

    async def _authenticate(
        self, scope: Scope, header: bytes | None, send: Send
    ) -> auth.Principal | None:
        """Check new credentials fully: the principal, or None once a 401 or 503 is sent."""
        authenticator = self.services.auth
        try:
            # bcrypt, a signature check or a key fetch: off the event loop.
            return await anyio.to_thread.run_sync(authenticator.authenticate, header)
        except auth.Unauthorized as exc:
            client = (scope.get("client") or ("?",))[0]
            method, where = scope.get("method"), scope.get("path")
            log.info("401 for %s %s from %s: %s", method, where, client, exc)
            body = problems.problem(401, "Unauthorized", str(exc))
            challenges = [("www-authenticate", c) for c in authenticator.challenges(exc)]
            await send_response(body, send, challenges)
        except auth.Unavailable as exc:
            log.warning("503 for %s %s: %s", scope.get("method"), scope.get("path"), exc)
            body = problems.problem(503, "Service Unavailable", str(exc))
            await send_response(body, send, [("retry-after", "5")])
        return None

    def _get_task(self, task_id: str, scope: Scope, principal: auth.Principal) -> ConnexionResponse:
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
            body = self.services.store.get_rendered(
                task_id, View(view), owner=principal.owner_filter()
            )
        except StoreError:
            return problems.store_unavailable()
        if body is None:  # also another owner's task: a 403 would tell that the id exists
            return problems.not_found(task_id)
        return ConnexionResponse(200, "application/json", "application/json", body=body)

    async def _create_task(
        self, receive: Receive, principal: auth.Principal
    ) -> tuple[ConnexionResponse | None, Receive]:
        """Answer CreateTask; or (None, a receive that replays the body) to leave it to Connexion.

        Only an empty body is left to Connexion, whose own message for it is the reference.
        """
        limit = self.services.settings.max_body_bytes
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None, _replay(chunks, message, receive)
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _bad_body(tasks.too_large(limit)), receive
            chunks.append(chunk)
            more = message.get("more_body", False)
        if not size:
            return None, _replay(chunks, None, receive)
        try:
            body = tasks.parse_body(b"".join(chunks))
        except ValueError as exc:
            return _bad_body(str(exc)), receive
        if body is None:
            return _bad_body(tasks.NO_TASK), receive
        record = tasks.new_task(self.services, principal, body)
        if isinstance(record, ConnexionResponse):
            return record, receive
        try:
            await self.services.intake.admit(record)
        except StoreError as exc:
            log.error("store error on POST /tasks: %s", exc)
            return problems.store_unavailable(), receive
        tasks.created(record, principal)
        body = json.dumps({"id": record.id})
        return ConnexionResponse(200, "application/json", "application/json", body=body), receive

    def _list_tasks(self, scope: Scope, principal: auth.Principal) -> ConnexionResponse:
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        one = {key: value for key, value in pairs}
        many: dict[str, list[str]] = {"tag_key": [], "tag_value": []}
        for key, value in pairs:
            if key in many:
                many[key].append(value)
        view, state, size = one.get("view", View.MINIMAL.value), one.get("state"), None
        # The same checks, and the same answers, as the spec-driven route's parameters.
        if view not in _VIEWS:
            return _bad("view", f"{view!r} is not one of {_VIEWS}")
        if state is not None and state not in _STATES:
            return _bad("state", f"{state!r} is not one of {_STATES}")
        if "page_size" in one:
            try:
                size = int(one["page_size"])
            except ValueError:
                return _bad("page_size", f"{one['page_size']!r} is not of type 'integer'")
        query = tasks.ListQuery(
            name_prefix=one.get("name_prefix"),
            state=state,
            tag_key=many["tag_key"] or None,
            tag_value=many["tag_value"] or None,
            page_size=size,
            page_token=one.get("page_token"),
            view=view,
        )
        try:
            result = tasks.list_page(self.services, principal, query, rendered=True)
        except StoreError:
            return problems.store_unavailable()
        if isinstance(result, ConnexionResponse):
            return result
        return ConnexionResponse(200, "application/json", "application/json", body=result)


def _bad(field: str, message: str) -> ConnexionResponse:
    return problems.problem(400, "Bad Request", f"{field}: {message}", field=field)


def _bad_body(detail: str) -> ConnexionResponse:
    # As Connexion's body validator answers: no field extension.
    return problems.problem(400, "Bad Request", detail)


def _is_json(scope: Scope) -> bool:
    """Tell whether the request says its body is ``application/json`` (parameters aside).

    Spelt so, as Connexion matches it; any other type is left to Connexion's route.
    """
    value = _header(scope, b"content-type")
    return value is not None and value.split(b";", 1)[0].strip() == b"application/json"


def _replay(chunks: list[bytes], last: Message | None, receive: Receive) -> Receive:
    """Return a receive that gives back what was read of the body, then reads on."""
    queued: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    if last is not None:
        queued.append(last)
    elif queued:
        queued[-1]["more_body"] = False
    else:
        queued.append({"type": "http.request", "body": b"", "more_body": False})

    async def replay() -> Message:
        return queued.pop(0) if queued else await receive()

    return replay


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def send_response(
    response: ConnexionResponse, send: Send, extra: Iterable[tuple[str, str]] = ()
) -> None:
    """Send a complete response, with ``extra`` headers."""
    body: Any = response.body
    data = body.encode() if isinstance(body, str) else bytes(body)
    headers = [
        (b"content-type", str(response.content_type).encode()),
        (b"content-length", str(len(data)).encode()),
    ]
    headers.extend((key.encode("latin-1"), value.encode("latin-1")) for key, value in extra)
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": data})
