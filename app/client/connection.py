"""One HTTP connection to a TES server: where it is, how to authenticate, one-line errors."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
API_PREFIX = "/ga4gh/tes/v1"
SERVER_VARIABLE = "KUEUE_TES_SERVER"
USER_VARIABLE = "KUEUE_TES_USER"
PASSWORD_VARIABLE = "KUEUE_TES_PASSWORD"
TOKEN_VARIABLE = "KUEUE_TES_TOKEN"
#: Seconds to wait for a connection, and for each answer.
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 30.0
#: Answers that say "try again later" rather than "this is wrong".
_TRANSIENT = frozenset({502, 503, 504})
_CREDENTIALS_HINT = f"set {USER_VARIABLE} and {PASSWORD_VARIABLE}, or {TOKEN_VARIABLE}"

Json = dict[str, Any]
Params = Sequence[tuple[str, str | int]]


class ClientError(Exception):
    """A failure to show the user as one line; ``transient`` when a retry may succeed."""

    def __init__(self, message: str, transient: bool = False, status: int | None = None) -> None:
        """Keep the message on one line; ``status`` is the HTTP status that caused it."""
        super().__init__(" ".join(message.split()))
        self.transient, self.status = transient, status


def api_base(server: str) -> str:
    """Return the TES base URL for a server address; an address ending in /v1 is kept as is."""
    address = server.strip().rstrip("/")
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(
            f"--server: {server!r} is not an http(s) URL (for example {DEFAULT_SERVER})"
        )
    if parts.query or parts.fragment:
        raise ClientError(f"--server: {server!r} must not have a query or a fragment")
    if address.endswith(("/ga4gh/tes/v1", "/v1")):
        return address
    return address + API_PREFIX


def credentials(env: Mapping[str, str]) -> httpx.Auth | None:
    """Return Basic or Bearer credentials from the environment, or None for none."""
    user, password = env.get(USER_VARIABLE), env.get(PASSWORD_VARIABLE)
    token = env.get(TOKEN_VARIABLE)
    if token is not None and (user is not None or password is not None):
        raise ClientError(
            f"set either {TOKEN_VARIABLE} (Bearer) or {USER_VARIABLE} and {PASSWORD_VARIABLE} "
            "(Basic), not both"
        )
    if token is not None:
        if not token.strip():
            raise ClientError(f"{TOKEN_VARIABLE} is set but empty")
        return _Bearer(token.strip())
    if user is None and password is None:
        return None
    if user is None or password is None:
        missing = USER_VARIABLE if user is None else PASSWORD_VARIABLE
        raise ClientError(f"{missing} is not set; Basic credentials need both")
    return httpx.BasicAuth(user, password)


class _Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = self._header
        yield request


def task_path(task_id: str, suffix: str = "") -> str:
    """Return the path of one task (its id quoted, so no id can reach another route)."""
    if not task_id.strip():
        raise ClientError("a task id must not be empty")
    return f"/tasks/{quote(task_id, safe='')}{suffix}"


class Connection:
    """A keep-alive HTTP client for the TES API of one server."""

    def __init__(self, server: str, env: Mapping[str, str] | None = None) -> None:
        """Check the address and the credentials; no request is made yet."""
        environ = os.environ if env is None else env
        self.server = server
        self.base = api_base(server)
        auth = credentials(environ)
        if auth is None:
            self._check = f"the server needs credentials: {_CREDENTIALS_HINT}"
        elif isinstance(auth, httpx.BasicAuth):
            self._check = f"check {USER_VARIABLE} and {PASSWORD_VARIABLE}"
        else:
            self._check = f"check {TOKEN_VARIABLE}"
        self._http = httpx.Client(
            auth=auth,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            headers={"accept": "application/json"},
            # Enough for the threads of `task wait` to share kept-alive connections.
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    def __enter__(self) -> Connection:
        """Use as a context manager."""
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the connections."""
        self._http.close()

    def create_task(self, body: Json) -> str:
        """CreateTask; return the new id."""
        answer = self.call("POST", "/tasks", body=body)
        if not isinstance(answer.get("id"), str):
            raise ClientError(f"{self.base}/tasks answered without an id: {answer}")
        return str(answer["id"])

    def get_task(self, task_id: str, view: str = "MINIMAL") -> Json:
        """GetTask in ``view``."""
        return self.call("GET", task_path(task_id), params=[("view", view)])

    def list_tasks(self, params: Params) -> Json:
        """ListTasks with the given query parameters (one page)."""
        return self.call("GET", "/tasks", params=params)

    def cancel_task(self, task_id: str) -> None:
        """CancelTask."""
        self.call("POST", task_path(task_id, ":cancel"), body={})

    def call(self, method: str, path: str, params: Params = (), body: Any = None) -> Json:
        """Send one request; return the JSON object answered, or raise a ClientError."""
        try:
            response = self._http.request(
                method, self.base + path, params=list(params) or None, json=body
            )
        except httpx.ConnectError as exc:
            raise ClientError(
                f"cannot reach {self.server}: {_reason(exc)}; is the server running? "
                f"(--server or {SERVER_VARIABLE})",
                transient=True,
            ) from exc
        except httpx.TimeoutException as exc:
            raise ClientError(
                f"{self.server} did not answer within {READ_TIMEOUT:g} s ({_reason(exc)})",
                transient=True,
            ) from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"{method} {self.base}{path}: {_reason(exc)}", True) from exc
        if response.is_success:
            document = _json(response)
            if not isinstance(document, dict):
                raise ClientError(
                    f"{method} {response.url} answered {response.status_code} with no JSON "
                    f"object; is {self.server} a TES server?"
                )
            return document
        raise self._failure(response)

    def _failure(self, response: httpx.Response) -> ClientError:
        code = response.status_code
        status = f"{code} {response.reason_phrase}".strip()
        if response.is_redirect:
            where = response.headers.get("location", "?")
            return ClientError(
                f"{status}: the server redirects to {where}; use that as --server", status=code
            )
        problem = _json(response)
        detail = None
        if isinstance(problem, dict):
            detail = problem.get("detail") or problem.get("title")
        if not isinstance(detail, str) or not detail.strip():
            return ClientError(
                f"{status} from {response.request.method} {response.url}, not a TES answer; "
                f"is {self.server} a TES server?",
                transient=code in _TRANSIENT,
                status=code,
            )
        if code == 401:
            return ClientError(f"{status}: {detail}; {self._check}", status=code)
        return ClientError(f"{status}: {detail}", transient=code in _TRANSIENT, status=code)


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def _reason(exc: Exception) -> str:
    """Return an exception's message without the errno prefix, or its class name."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip())
    return text or type(exc).__name__
