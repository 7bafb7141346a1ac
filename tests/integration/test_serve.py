"""`kueue-tes serve`, the README's run command, as a real process on a free port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import spec
from tests.conftest import ROOT, free_port


def _call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """Start `kueue-tes serve` with no configuration but a data dir; yield its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUEUE_TES_")}
    env["KUEUE_TES_LOCAL_IMAGES"] = "host"  # the task's alpine must not be pulled from the Internet
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if _call(base, "GET", "/ga4gh/tes/v1/service-info")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve did not start:\n{proc.communicate()[0]}")
        time.sleep(0.1)
    yield base
    proc.terminate()
    output = proc.communicate(timeout=10)[0]
    assert "Traceback" not in output, output


def _wait_state(base: str, task_id: str, state: str) -> None:
    deadline = time.monotonic() + 10
    while _call(base, "GET", f"/v1/tasks/{task_id}")[1]["state"] != state:
        assert time.monotonic() < deadline, f"task never reached {state}"
        time.sleep(0.05)


def test_serve_runs_the_api_queue_and_worker(served: str, tmp_path: Path) -> None:
    """service-info on both prefixes; create, views, list, cancel through the embedded queue."""
    for path in ("/ga4gh/tes/v1/service-info", "/v1/service-info", "/v1/tasks/service-info"):
        status, body = _call(served, "GET", path)
        assert status == 200
        spec.check("tesServiceInfo", body)
    task = {
        "name": "demo",
        "tags": {"run": "1"},
        "executors": [{"image": "alpine", "command": ["echo", "hi"]}],
    }
    status, created = _call(served, "POST", "/ga4gh/tes/v1/tasks", task)
    assert status == 200
    task_id = created["id"]
    for view in ("MINIMAL", "BASIC", "FULL"):
        status, body = _call(served, "GET", f"/ga4gh/tes/v1/tasks/{task_id}?view={view}")
        assert status == 200 and body["id"] == task_id and body["state"] == "QUEUED"
    status, listed = _call(served, "GET", "/v1/tasks?name_prefix=de&tag_key=run&tag_value=1")
    assert [t["id"] for t in listed["tasks"]] == [task_id]
    assert _call(served, "POST", f"/v1/tasks/{task_id}:cancel")[0] == 200
    _wait_state(served, task_id, "CANCELED")  # the embedded worker ran the cancel job
    assert (tmp_path / "data" / "tasks.db").exists()
    assert _call(served, "GET", "/v1/tasks/unknown")[0] == 404


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `kueue-tes ARGS` with no KUEUE_TES_* but ``env``; capture its output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUEUE_TES_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        check=False,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_without_bubblewrap_fails_at_start_with_a_clear_message(tmp_path: Path) -> None:
    """No bwrap: serve exits at once and says how to install it, without a traceback."""
    proc = _cli(
        "serve",
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "data"),
        KUEUE_TES_BWRAP=str(tmp_path / "no-such-bwrap"),
    )
    assert proc.returncode != 0
    assert "bubblewrap" in proc.stderr and "apt-get install bubblewrap" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["worker", "watch"])
def test_kubernetes_processes_without_a_cluster_say_so(tmp_path: Path, command: str) -> None:
    """worker and watch with no reachable cluster config exit with a message, no traceback."""
    proc = _cli(
        command,
        KUEUE_TES_REDIS_URL="redis://127.0.0.1:1/0",
        KUEUE_TES_DATA_DIR=str(tmp_path),
        KUBECONFIG=str(tmp_path / "no-such-kubeconfig"),
        HOME=str(tmp_path),
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"kueue-tes {command}: ")
    assert "Traceback" not in proc.stderr
