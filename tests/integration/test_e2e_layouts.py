"""Both pod layouts end to end through a real `kueue-tes serve` and its local runtime.

The pod's conditions are read from the local runtime's own record of the Pod (the object it
reports to the watcher, kept as JSON under the data directory), while an HTTP input is held
back by a loopback server to keep stage-in running.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.e2e_support import Json, Server, serve_env, serving, show

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


class HeldInput:
    """A loopback HTTP server whose one file is sent only once the test releases it."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                held.asked.set()
                held.release.wait(30)
                body = b"held input\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/input.txt"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HeldInput:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held() -> Iterator[HeldInput]:
    """The held HTTP input."""
    with HeldInput() as server:
        yield server


def pod_of(data: Path, task_id: str) -> Json | None:
    """The Pod of a task as the local runtime last reported it, or None."""
    try:
        record = json.loads((data / "local" / f"tes-{task_id}" / "pod.json").read_text())
    except (OSError, ValueError):
        return None
    pod: Json = record["object"]
    return pod


def ready(pod: Json) -> bool:
    """The pod's Ready condition."""
    found = [c for c in pod["status"].get("conditions", []) if c["type"] == "Ready"]
    return bool(found and found[0]["status"] == "True")


def ended(pod: Json) -> list[str]:
    """Containers of the pod that have terminated."""
    statuses = [*pod["status"].get("initContainerStatuses", [])]
    statuses += pod["status"].get("containerStatuses", [])
    return [s["name"] for s in statuses if "terminated" in s["state"]]


STEP = "echo {0} >> /scratch/order.txt; cat /scratch/order.txt; sleep 0.3"


STDOUTS = ["0\n", "0\n1\n", "0\n1\n2\n"]


def three_steps(url: str) -> Json:
    """Three executors that take turns on a volume, then one that reads the input from ``url``."""
    return {
        "name": "layouts",
        "inputs": [{"path": "/in/in.txt", "url": url}],  # a file mount, bound before stage-in
        "volumes": ["/scratch"],
        "executors": [
            *({"image": "alpine", "command": ["sh", "-c", STEP.format(i)]} for i in range(3)),
            {"image": "alpine", "command": ["cat", "/in/in.txt"]},
        ],
    }


def follow(server: Server, data: Path, task_id: str) -> tuple[Json, list[Json]]:
    """Poll the task and its pod until the task is terminal; return it and the pod's snapshots."""
    snapshots: list[Json] = []
    deadline = time.monotonic() + 60
    while True:
        pod = pod_of(data, task_id)
        if pod is not None and (not snapshots or pod != snapshots[-1]):
            snapshots.append(pod)
        task = server.get(task_id)
        if task["state"] not in ("QUEUED", "INITIALIZING", "RUNNING"):
            return task, snapshots
        assert time.monotonic() < deadline, show(task)
        time.sleep(0.02)


def test_ready_layout_pod_is_ready_during_stage_in_and_until_the_verdict(
    tmp_path: Path, held: HeldInput
) -> None:
    """Ready while the input is held back, Ready through four executors, run in order."""
    data = tmp_path / "data"
    with serving(data, serve_env({})) as server:
        task_id = server.create(three_steps(held.url))
        assert held.asked.wait(30), server.lines_about(task_id)
        deadline = time.monotonic() + 30
        while (pod := pod_of(data, task_id)) is None or not ready(pod):
            assert time.monotonic() < deadline, (pod, server.lines_about(task_id))
            time.sleep(0.02)
        # stage-in is still running: the sequencer waits for the held input
        assert server.get(task_id)["state"] == "INITIALIZING"
        statuses = pod["status"]["containerStatuses"]
        assert {s["name"] for s in statuses} == {*(f"executor-{i}" for i in range(4)), "finish"}
        assert all("running" in s["state"] for s in statuses), statuses
        held.release.set()
        task, snapshots = follow(server, data, task_id)
    assert task["state"] == "COMPLETE", show(task)
    assert "RUNNING" in server.history[task_id], server.history[task_id]
    # Ready held from before stage-in ended until the first container ended (the verdict)
    running = [p for p in snapshots if not ended(p) or ended(p) == ["setup"]]
    assert running and all(ready(p) for p in running), [p["status"] for p in running]
    logs = task["logs"][0]["logs"]
    assert [e["stdout"] for e in logs] == [*STDOUTS, "held input\n"], show(task)
    times = [t for e in logs for t in (e["start_time"], e["end_time"])]
    assert times == sorted(times), show(task)


def test_init_layout_still_runs_and_is_ready_only_at_the_end(
    tmp_path: Path, held: HeldInput
) -> None:
    """KUEUE_TES_POD_LAYOUT=init: executors as init containers; not Ready while they run."""
    data = tmp_path / "data"
    held.release.set()
    with serving(data, serve_env({"KUEUE_TES_POD_LAYOUT": "init"})) as server:
        task_id = server.create(three_steps(held.url))
        task, snapshots = follow(server, data, task_id)
    assert task["state"] == "COMPLETE", show(task)
    names = [c["name"] for c in snapshots[-1]["spec"]["initContainers"]]
    assert names == ["setup", "sequencer", *(f"executor-{i}" for i in range(4))]
    during = [p for p in snapshots if "executor-0" in ended(p) and "executor-3" not in ended(p)]
    assert during and not any(ready(p) for p in during)
    logs = task["logs"][0]["logs"]
    assert [e["stdout"] for e in logs] == [*STDOUTS, "held input\n"], show(task)
