"""The outermost ASGI layer of the API: counts and times every request, and serves /metrics.

It sits outside the front door (app/frontdoor.py) and Connexion's exception handling, so it
sees every answer whoever gives it: the GetTask and ListTasks fast paths, the spec-driven
routes, 401s, 404s and the 500s of handled errors. The operation label comes from a bounded
map of the spec's route templates to their operationIds (:class:`Operations`), never from the
raw path. The per-request cost is a dict lookup of the path's operation and a few additions in plain
Python; they reach the shared metrics once a second (:class:`app.metrics.RequestTally`).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path

import anyio.to_thread
import yaml
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.services import Services

METRICS_PATH = "/metrics"
DASHBOARD = "Dashboard"  # the dashboard's pages, one label value for all of them
OTHER = "other"  # any path or method no route serves

#: Request counts reach the shared metrics at least this often (seconds).
FLUSH_SECONDS = 1.0
_NAMES = 4096  # paths whose operation name is remembered


class Operations:
    """Route templates of the spec under each base path → operationId, tried in order."""

    def __init__(self, routes: Iterable[tuple[str, str, str]]) -> None:
        """Use (method, path regex, operationId) triples."""
        self._routes = [(method, re.compile(rx), name) for method, rx, name in routes]

    @classmethod
    def from_spec(cls, spec: Path, base_paths: Iterable[str]) -> Operations:
        """Read the operations of an OpenAPI file served under ``base_paths``."""
        return cls(_routes(str(spec), tuple(base_paths)))

    def name(self, method: str, path: str) -> str:
        """Return the operationId serving ``method path``, DASHBOARD, or OTHER."""
        if path.startswith("/dashboard"):
            return DASHBOARD
        for want, rx, name in self._routes:
            if want == method and rx.match(path):
                return name
        return OTHER


@functools.lru_cache(maxsize=4)
def _routes(spec: str, base_paths: tuple[str, ...]) -> list[tuple[str, str, str]]:
    doc = yaml.load(Path(spec).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    found: list[tuple[str, str, str, int]] = []
    for template, ops in (doc.get("paths") or {}).items():
        literal = re.escape(template).replace(r"\{id\}", "[^/]+")
        for method, op in ops.items():
            if isinstance(op, dict) and "operationId" in op:
                for base in base_paths:
                    rx = f"^{re.escape(base)}{literal}$"
                    found.append((method.upper(), rx, op["operationId"], -len(template)))
    # py-tes 0.4 asks for service-info here; the front door answers it as GetServiceInfo.
    found.append(("GET", r"^/v1/tasks/service-info$", "GetServiceInfo", -1000))
    found.sort(key=lambda route: route[3])  # the longest template first: ":cancel" before {id}
    return [(method, rx, name) for method, rx, name, _ in found]


class Meter:
    """Count and time every HTTP request; answer ``GET /metrics`` (no credentials needed)."""

    def __init__(self, app: ASGIApp, services: Services, operations: Operations) -> None:
        """Wrap the rest of the stack; ``services.store`` feeds ``kueue_tes_tasks``."""
        self.app, self.operations = app, operations
        self.extra = CollectorRegistry(auto_describe=False)
        self.extra.register(metrics.TaskCounts(services.store.counts))
        self.tally = metrics.RequestTally()
        self._flushing: asyncio.AbstractEventLoop | None = None  # where a flush is due
        # Clients poll the same few paths over and over: remember their names (bounded).
        self._names: dict[tuple[str, str], str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI event."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == METRICS_PATH and method in ("GET", "HEAD"):
            await self._expose(method, send)
            return
        operation = self._names.get((method, path))
        if operation is None:
            operation = self.operations.name(method, path)
            if len(self._names) >= _NAMES:
                self._names.clear()
            self._names[(method, path)] = operation
        status = 500  # what the client gets if the app raises before it answers
        start = time.perf_counter()

        def sending(message: Message) -> Awaitable[None]:
            # Not a coroutine itself: the caller awaits send's own, one frame fewer.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.tally.add(operation, status, time.perf_counter() - start)
            loop = asyncio.get_running_loop()
            if self._flushing is not loop:
                self._flushing = loop
                loop.call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        # On the event loop, like every add: no lock. It stops once a second passes idle.
        if self.tally.flush():
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)
        else:
            self._flushing = None

    async def _expose(self, method: str, send: Send) -> None:
        self.tally.flush()  # this process's counts are exact; other workers' at most 1 s late
        # The store's counts may be a network round trip: off the event loop.
        body = await anyio.to_thread.run_sync(metrics.exposition, self.extra)
        headers = [
            (b"content-type", metrics.CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
