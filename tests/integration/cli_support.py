"""Running the real `kueue-tes task` console script against real servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.integration.e2e_support import Server

#: The console script pip installed next to this interpreter (.venv/bin, or tox's env).
KUEUE_TES = Path(sys.executable).with_name("kueue-tes")
ID = re.compile(r"^[0-9a-z]{26}$")
STATE_LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<id>[0-9a-z]{26}) (?P<state>[A-Z_]+)$")

Json = dict[str, Any]

#: Tasks of the tests (the local runtime runs executors on the host's root file system).
ECHO: Json = {
    "name": "cli-echo",
    "executors": [
        {"image": "alpine", "command": ["sh", "-c", "echo one; echo oops >&2"]},
        {"image": "alpine", "command": ["echo", "two"]},
    ],
}
FAIL: Json = {
    "name": "cli-fail",
    "executors": [
        {"image": "alpine", "command": ["sh", "-c", "echo partial; echo broken >&2; exit 3"]}
    ],
}
SLEEP: Json = {"name": "cli-sleep", "executors": [{"image": "alpine", "command": ["sleep", "600"]}]}
#: Asks for more cpu than any test server has: Kueue keeps it QUEUED, saying why.
BIG: Json = {
    "name": "cli-big",
    "resources": {"cpu_cores": 1000},
    "executors": [{"image": "alpine", "command": ["true"]}],
}


def address(server: Server) -> str:
    """Return a server's address as a user gives it: scheme, host and port."""
    return server.base.removesuffix("/ga4gh/tes/v1")


def client_env(server: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this environment without KUEUE_TES_*, with KUEUE_TES_SERVER and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUEUE_TES_")}
    if server is not None:
        env["KUEUE_TES_SERVER"] = server
    env.update(extra or {})
    return env


def cli(
    *args: str,
    server: str | None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `kueue-tes task ARGS` with KUEUE_TES_SERVER=``server``; capture its output."""
    return subprocess.run(
        [str(KUEUE_TES), "task", *args],
        env=client_env(server, env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def background_wait(server: str, task_id: str) -> subprocess.Popen[str]:
    """Start `kueue-tes task wait TASK_ID` (polling every 0.5 s at most) in the background."""
    return subprocess.Popen(
        [str(KUEUE_TES), "task", "wait", task_id, "--max-interval", "0.5"],
        env=client_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert a command succeeded quietly; return its stdout."""
    assert proc.returncode == 0 and proc.stderr == "", (proc.returncode, proc.stderr)
    return proc.stdout


def failed(proc: subprocess.CompletedProcess[str], command: str) -> str:
    """Assert exit status 3 with exactly one line on stderr, naming the command; return it."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"kueue-tes task {command}: "), lines[0]
    return lines[0]


def create(server: str, task: Json, tmp_path: Path, env: Mapping[str, str] | None = None) -> str:
    """Create ``task`` through `task create FILE`; return the id it printed."""
    path = tmp_path / f"task-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(task))
    out = ok(cli("create", str(path), server=server, env=env))
    assert ID.match(out.strip()) and out.count("\n") == 1, out
    return out.strip()


def state_lines(stdout: str) -> list[tuple[str, str]]:
    """Parse `task wait`'s state-change lines into (id, state) pairs, checking their form."""
    pairs = []
    for line in stdout.splitlines():
        match = STATE_LINE.match(line)
        assert match, f"not a state-change line: {line!r}"
        pairs.append((match["id"], match["state"]))
    return pairs
