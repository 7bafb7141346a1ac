"""`kueue-tes task` when things go wrong: one line on stderr, exit status 3, never a traceback.
Against real servers: an unreachable port, a server that is not TES, `kueue-tes serve` open
and with Basic and OIDC (a real JWKS on loopback), and a server that restarts mid-wait."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import pytest

from tests.conftest import free_port
from tests.idp import AUDIENCE, IdentityProvider
from tests.integration.cli_support import (
    BIG,
    ECHO,
    address,
    background_wait,
    cli,
    create,
    failed,
    ok,
    state_lines,
)
from tests.integration.e2e_support import Server, serve_env, serving

UNKNOWN = "01zzzzzzzzzzzzzzzzzzzzzzzz"
PASSWORDS = {"alice": "wonder-land-1", "bob": "build:er-2", "root": "r00t-3"}
CLIENT_VARIABLES = ("KUEUE_TES_SERVER", "KUEUE_TES_USER", "KUEUE_TES_PASSWORD", "KUEUE_TES_TOKEN")


def basic(name: str, password: str | None = None) -> dict[str, str]:
    """The client's environment for Basic credentials."""
    return {"KUEUE_TES_USER": name, "KUEUE_TES_PASSWORD": password or PASSWORDS[name]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An open `kueue-tes serve`."""
    with serving(tmp_path_factory.mktemp("cli-errors") / "data", serve_env({})) as running:
        yield running


@pytest.fixture(scope="module")
def provider() -> Iterator[IdentityProvider]:
    """A real OIDC discovery document and JWKS on loopback."""
    with IdentityProvider() as running:
        running.add_key("k1")
        yield running


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, provider: IdentityProvider) -> Iterator[str]:
    """`kueue-tes serve` with Basic (alice, bob, root the admin) and OIDC; yield its address.

    The client's own variables are set in the server's environment too: Settings ignores them.
    """
    tmp = tmp_path_factory.mktemp("cli-auth")
    lines = [
        f"{name}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}"
        + (":admin" if name == "root" else "")
        for name, password in PASSWORDS.items()
    ]
    (tmp / "users").write_text("\n".join(lines) + "\n")
    env = serve_env(
        {
            "KUEUE_TES_AUTH": "basic,oidc",
            "KUEUE_TES_BASIC_USERS_FILE": str(tmp / "users"),
            "KUEUE_TES_OIDC_ISSUER": provider.issuer,
            "KUEUE_TES_OIDC_AUDIENCE": AUDIENCE,
            **{name: "meant-for-the-client" for name in CLIENT_VARIABLES},
        }
    )
    with serving(tmp / "data", env) as running:
        yield address(running)


@pytest.mark.parametrize(
    "args",
    [
        ("create", "-"),
        ("get", UNKNOWN),
        ("list",),
        ("wait", UNKNOWN),
        ("cancel", UNKNOWN),
        ("logs", UNKNOWN),
    ],
    ids=lambda args: args[0],
)
def test_an_unreachable_server_is_one_line(args: tuple[str, ...]) -> None:
    """Nothing listens on the port: every command says it cannot reach the server."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    line = failed(cli(*args, server=nowhere, stdin=json.dumps(ECHO)), args[0])
    assert f"cannot reach {nowhere}: Connection refused; is the server running?" in line


def test_a_server_that_is_not_tes_is_named(provider: IdentityProvider) -> None:
    """An HTTP server that answers, but not as TES (an HTML 404): the line says so."""
    line = failed(cli("get", UNKNOWN, server=provider.issuer), "get")
    assert line.startswith(f"kueue-tes task get: 404 Not Found from GET {provider.issuer}")
    assert line.endswith(f"not a TES answer; is {provider.issuer} a TES server?")


@pytest.fixture
def broken() -> Iterator[str]:
    """A real HTTP server on loopback whose JSON answers are not TES-shaped."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"tasks": 5, "state": 7, "logs": 5}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_garbled_answer_is_one_line_too(broken: str) -> None:
    """Whatever a broken server answers, the user gets one line, not a traceback."""
    for command in ("list", "logs"):
        args = (command,) if command == "list" else (command, UNKNOWN)
        proc = cli(*args, server=broken)
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("kueue-tes task: unexpected error: "), proc.stderr


@pytest.mark.parametrize("command", ["get", "wait", "cancel", "logs"])
def test_an_unknown_id_is_a_404_line(server: Server, command: str) -> None:
    """404 with the server's detail."""
    line = failed(cli(command, UNKNOWN, server=address(server)), command)
    assert line == f"kueue-tes task {command}: 404 Not Found: no task with id '{UNKNOWN}'"


def test_cancel_goes_on_past_an_unknown_id(server: Server, tmp_path: Path) -> None:
    """Of several ids, the known ones are canceled; the unknown one is a line and status 3."""
    url = address(server)
    task_id = create(url, BIG, tmp_path)
    proc = cli("cancel", UNKNOWN, task_id, server=url)
    assert proc.returncode == 3 and proc.stdout == task_id + "\n"
    assert proc.stderr.splitlines() == [
        f"kueue-tes task cancel: 404 Not Found: no task with id '{UNKNOWN}'"
    ]


def test_an_invalid_task_is_a_400_line_with_the_problems_detail(server: Server) -> None:
    """The server's 400 problem detail names the field."""
    url = address(server)
    no_command = {"executors": [{"image": "alpine"}]}
    line = failed(cli("create", "-", server=url, stdin=json.dumps(no_command)), "create")
    assert line == "kueue-tes task create: 400 Bad Request: executors[0].command: Field required"
    relative = dict(ECHO, inputs=[{"path": "data/x", "content": "x"}])
    line = failed(cli("create", "-", server=url, stdin=json.dumps(relative)), "create")
    assert line.startswith("kueue-tes task create: 400 Bad Request: inputs[0].path: ")
    line = failed(cli("list", "--page-token", "bogus", server=url), "list")
    assert line.startswith("kueue-tes task list: 400 Bad Request: page_token: ")


def test_a_bad_task_file_is_named_before_anything_is_sent(tmp_path: Path) -> None:
    """A missing file, text that is not JSON, JSON that is not an object: said at once (the
    server address leads nowhere, so nothing was sent)."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    missing = tmp_path / "missing.json"
    line = failed(cli("create", str(missing), server=nowhere), "create")
    assert line == f"kueue-tes task create: cannot read {missing}: No such file or directory"
    (tmp_path / "bad.json").write_text("{executors: []}")
    line = failed(cli("create", str(tmp_path / "bad.json"), server=nowhere), "create")
    assert line.startswith(f"kueue-tes task create: {tmp_path / 'bad.json'}: not valid JSON (")
    line = failed(cli("create", "-", server=nowhere, stdin="[1, 2]"), "create")
    assert line == "kueue-tes task create: stdin: a task must be a JSON object, not list"


def test_bad_settings_of_the_client_are_named() -> None:
    """A server address without a scheme; credentials half set or set twice."""
    line = failed(cli("list", server="localhost:8000"), "list")
    assert "'localhost:8000' is not an http(s) URL" in line
    nowhere = f"http://127.0.0.1:{free_port()}"
    line = failed(cli("list", server=nowhere, env={"KUEUE_TES_USER": "alice"}), "list")
    assert line == "kueue-tes task list: KUEUE_TES_PASSWORD is not set; Basic credentials need both"
    both = {**basic("alice"), "KUEUE_TES_TOKEN": "x"}
    line = failed(cli("list", server=nowhere, env=both), "list")
    assert "set either KUEUE_TES_TOKEN (Bearer) or KUEUE_TES_USER and KUEUE_TES_PASSWORD" in line


def test_usage_errors_exit_3_not_2(server: Server) -> None:
    """A usage error must not look like `task wait`'s status 2 (SYSTEM_ERROR or CANCELED)."""
    url = address(server)
    for args in (("list", "--tag", "=x"), ("frob",), ("wait",), ("list", "--state", "DONE")):
        proc = cli(*args, server=url)
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
        assert "Error: " in proc.stderr and proc.stdout == ""


def test_401_says_which_variables_to_set(secured: str, provider: IdentityProvider) -> None:
    """No credentials, a wrong password, an expired token: 401 with the server's reason and the
    variables to set or check."""
    line = failed(cli("list", server=secured), "list")
    assert line.startswith("kueue-tes task list: 401 Unauthorized: ")
    assert line.endswith(
        "; the server needs credentials: set KUEUE_TES_USER and KUEUE_TES_PASSWORD, "
        "or KUEUE_TES_TOKEN"
    )
    line = failed(cli("list", server=secured, env=basic("alice", "wrong")), "list")
    assert line.startswith("kueue-tes task list: 401 Unauthorized: ")
    assert line.endswith("; check KUEUE_TES_USER and KUEUE_TES_PASSWORD")
    expired = provider.token("alice", exp=int(time.time()) - 3600)
    line = failed(cli("list", server=secured, env={"KUEUE_TES_TOKEN": expired}), "list")
    assert "401 Unauthorized: the token has expired" in line
    assert line.endswith("; check KUEUE_TES_TOKEN")


def test_basic_and_bearer_credentials_and_ownership(
    secured: str, provider: IdentityProvider, tmp_path: Path
) -> None:
    """alice (Basic) creates; alice by Bearer token sees and waits for it; bob gets 404 and does
    not list it; root, an admin, lists it."""
    alice, token = basic("alice"), {"KUEUE_TES_TOKEN": provider.token("alice")}
    task_id = create(secured, ECHO, tmp_path, env=alice)
    waited = cli("wait", task_id, server=secured, env=token)
    assert waited.returncode == 0 and state_lines(waited.stdout)[-1] == (task_id, "COMPLETE")
    assert ok(cli("logs", task_id, server=secured, env=token)) == "one\ntwo\n"
    line = failed(cli("get", task_id, server=secured, env=basic("bob")), "get")
    assert line == f"kueue-tes task get: 404 Not Found: no task with id '{task_id}'"
    failed(cli("cancel", task_id, server=secured, env=basic("bob")), "cancel")
    listed = json.loads(
        ok(cli("list", "--json", "--view", "minimal", server=secured, env=basic("bob")))
    )
    assert task_id not in [t["id"] for t in listed["tasks"]]
    listed = json.loads(
        ok(cli("list", "--json", "--view", "minimal", server=secured, env=basic("root")))
    )
    assert task_id in [t["id"] for t in listed["tasks"]]


def test_wait_rides_out_a_server_restart(tmp_path: Path) -> None:
    """The server goes away while wait polls: wait says so once, keeps polling, says when the
    server answers again, and follows the task to its end."""
    data, port = tmp_path / "data", free_port()
    with serving(data, serve_env({}), port=port) as first:
        url = address(first)
        task_id = create(url, BIG, tmp_path)
        waiting = background_wait(url, task_id)
        assert waiting.stdout is not None and waiting.stderr is not None
        assert waiting.stdout.readline().split()[1:] == [task_id, "QUEUED"]
    try:
        while "retrying" not in (line := waiting.stderr.readline()):
            assert line, "wait ended instead of waiting the outage out"
        assert line.startswith(f"cannot reach {url}: Connection refused")
        with serving(data, serve_env({}), port=port):
            ok(cli("cancel", task_id, server=url))
            out, err = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 2, err
    assert f"{url} answers again" in err.splitlines()
    assert state_lines(out)[-1] == (task_id, "CANCELED")
    assert "Traceback" not in err
