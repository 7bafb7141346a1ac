"""End-to-end helpers: a real `kueue-tes serve` process, a TES client for it, an FTP server."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import ThreadedFTPServer

from tests.conftest import ROOT, free_port

Json = dict[str, Any]
TERMINAL = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"})
#: What the local runtime says about images, in every task's system_logs.
IMAGES_NOTE = "images are not pulled"


def show(task: Json) -> str:
    """Return a task as indented JSON, for failure messages."""
    return json.dumps(task, indent=2, sort_keys=True)


@dataclass
class Server:
    """One `kueue-tes serve` process and a small TES client for it."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    history: dict[str, list[str]] = field(default_factory=dict)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request under /ga4gh/tes/v1; return the status and the decoded body."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def create(self, task: Json) -> str:
        """Create a task; return its id."""
        status, body = self.call("POST", "/tasks", task)
        assert status == 200, (status, body)
        self.history[body["id"]] = []
        return str(body["id"])

    def get(self, task_id: str, view: str = "FULL") -> Json:
        """Return a task in ``view``, recording each new state seen."""
        status, body = self.call("GET", f"/tasks/{task_id}?view={view}")
        assert status == 200, (status, body)
        seen = self.history.setdefault(task_id, [])
        if not seen or seen[-1] != body["state"]:
            seen.append(body["state"])
        return dict(body)

    def cancel(self, task_id: str) -> None:
        """Cancel a task."""
        status, body = self.call("POST", f"/tasks/{task_id}:cancel")
        assert status == 200, (status, body)

    def wait_all(self, task_ids: Iterable[str], timeout: float = 60.0) -> dict[str, Json]:
        """Poll the tasks until all are terminal or ``timeout`` passes; return their FULL views."""
        pending = list(task_ids)
        last: dict[str, Json] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                last[task_id] = self.get(task_id)
                if last[task_id]["state"] in TERMINAL:
                    pending.remove(task_id)
            time.sleep(0.05)
        return last

    def wait(self, task_id: str, timeout: float = 60.0) -> Json:
        """Return a task's FULL view once it is terminal; fail with that view if it never is."""
        task = self.wait_all([task_id], timeout)[task_id]
        assert task["state"] in TERMINAL, (
            f"not terminal after {timeout} s:\n{show(task)}\n{self.lines_about(task_id)}"
        )
        return task

    def lines_about(self, task_id: str) -> str:
        """Return the server's log lines about one task."""
        return "".join(line for line in self.output().splitlines(True) if task_id in line)

    def output(self) -> str:
        """Return what the server printed so far."""
        return self.log.read_text(errors="replace")


def serve_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Return this process's environment without KUEUE_TES_*/AWS_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUEUE_TES_", "AWS_", "BOTO"))}
    env["KUEUE_TES_LOG_LEVEL"] = "DEBUG"  # probe results and more, for failure messages
    # Tasks of these tests run the host's programs; the image tests ask for pulls themselves.
    env["KUEUE_TES_LOCAL_IMAGES"] = "host"
    env.update(extra)
    return env


@contextmanager
def serving(data_dir: Path, env: Mapping[str, str], port: int | None = None) -> Iterator[Server]:
    """Run `kueue-tes serve` on ``port`` (default: a free one) with ``env``; stop it and check
    its output at exit."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}-serve.log"
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    argv += ["--data-dir", str(data_dir)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=ROOT, env=dict(env), stdout=sink, stderr=sink)
    server = Server(proc, f"http://127.0.0.1:{port}/ga4gh/tes/v1", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if server.call("GET", "/service-info")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"kueue-tes serve did not start:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    output = server.output()
    assert "Traceback" not in output, output
    # Killed by the signal's default action, it would have skipped killing its pods.
    assert proc.returncode >= 0, f"serve ended by signal {-proc.returncode}:\n{output[-3000:]}"
    left = processes_with(str(data_dir))
    assert left == [], f"processes of stopped tasks are still running: {left}"


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Return the host processes whose command line or mounts mention ``marker``.

    A sandboxed process shows its pod's directory (under the data dir) in its mount table.
    """
    found: list[tuple[int, str]] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            mounts = (entry / "mountinfo").read_text(errors="replace")
        except OSError:
            continue
        if line and (marker in line or marker in mounts):  # zombies have no command line
            found.append((int(entry.name), line.strip()))
    return found


@contextmanager
def ftp_server(home: Path) -> Iterator[str]:
    """Serve ``home`` over FTP on 127.0.0.1 (alice/secret, and anonymous); yield host:port."""
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_user("alice", "secret", str(home), perm="elradfmwMT")
    authorizer.add_anonymous(str(home))
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.02, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.address[1]}"
    finally:
        stop.set()
        thread.join(5)
