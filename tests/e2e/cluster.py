"""Helpers of the e2e suite: kubectl, a port-forward to the API, and a small TES client.

Standard library only, so that the suite is collected (and skipped) anywhere.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONTROL_NS = "kueue-tes"
TASK_NS = "kueue-tes-tasks"
S3_NS = "kueue-tes-s3"
TERMINAL = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"})
#: Seconds a task may take to reach a state (image pulls on a cold kind node included).
TIMEOUT = float(os.environ.get("KUEUE_TES_E2E_TIMEOUT", "300"))

Json = dict[str, Any]


def skip_reason() -> str | None:
    """Return why the e2e suite cannot run here, or None when it can."""
    if not os.environ.get("KUBECONFIG"):
        return "e2e needs a cluster: set KUBECONFIG (tests/e2e/run.sh does it for kind)"
    if shutil.which("kubectl") is None:
        return "e2e needs kubectl on PATH"
    done = subprocess.run(
        ["kubectl", "config", "current-context"], capture_output=True, text=True, check=False
    )
    context = done.stdout.strip()
    if done.returncode != 0:
        return f"e2e: kubectl has no current context ({done.stderr.strip()})"
    # The suite installs the dev overlay: never into a cluster someone did not mean.
    if not context.startswith("kind-") and os.environ.get("KUEUE_TES_E2E_ANY_CONTEXT") != "1":
        return (
            f"e2e runs against kind clusters only; the current context is {context!r} "
            "(set KUEUE_TES_E2E_ANY_CONTEXT=1 to use it anyway)"
        )
    return None


def kubectl(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run kubectl; on failure with ``check``, raise with its stderr."""
    done = subprocess.run(
        ["kubectl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done


def retry(what: str, action: Callable[[], Any], timeout: float, pause: float = 3.0) -> Any:
    """Call ``action`` until it does not raise, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout:.0f}s: {exc}") from exc
            time.sleep(pause)


def exists(kind: str, name: str, namespace: str) -> bool:
    """Tell whether an object exists."""
    done = kubectl("-n", namespace, "get", kind, name, "-o", "name", check=False)
    if done.returncode == 0:
        return True
    if "NotFound" in done.stderr:
        return False
    raise RuntimeError(f"kubectl get {kind} {name}: {done.stderr}")


def s3_read(key: str, bucket: str = "tes") -> str:
    """Return an object of the dev overlay's S3 server, read from inside its pod."""
    script = (
        "import sys, boto3; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:5000', "
        "region_name='us-east-1', aws_access_key_id='e2e', aws_secret_access_key='e2e'); "
        "sys.stdout.write(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read()"
        ".decode())"
    )
    done = kubectl("-n", S3_NS, "exec", "deploy/s3", "--", "python3", "-c", script, bucket, key)
    return done.stdout


@dataclass
class PortForward:
    """`kubectl port-forward` to a Service, on a free local port."""

    namespace: str
    target: str
    port: int
    process: subprocess.Popen[str] | None = None
    local: int = 0

    def start(self, timeout: float = 30) -> int:
        """Start forwarding; return the local port."""
        self.process = subprocess.Popen(
            ["kubectl", "-n", self.namespace, "port-forward", self.target, f":{self.port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            seen.append(line)
            found = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            if found:
                self.local = int(found.group(1))
                return self.local
        self.stop()
        raise RuntimeError(f"port-forward {self.target} did not start:\n{''.join(seen)}")

    def stop(self) -> None:
        """Stop forwarding."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class Tes:
    """A TES 1.1 client for one base URL that remembers the tasks it created."""

    base: str
    created: list[str] = field(default_factory=list)

    def _call(self, method: str, path: str, body: Json | None = None) -> Json:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                result: Json = json.loads(response.read() or b"{}")
                return result
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read().decode()}") from exc

    def service_info(self) -> Json:
        """GET /service-info."""
        return self._call("GET", "/service-info")

    def create(self, task: Json) -> str:
        """POST /tasks; return the id."""
        task_id = str(self._call("POST", "/tasks", task)["id"])
        self.created.append(task_id)
        return task_id

    def get(self, task_id: str, view: str = "FULL") -> Json:
        """GET /tasks/{id}."""
        return self._call("GET", f"/tasks/{task_id}?view={view}")

    def cancel(self, task_id: str) -> None:
        """POST /tasks/{id}:cancel."""
        self._call("POST", f"/tasks/{task_id}:cancel", {})

    def wait(
        self, task_id: str, until: Callable[[Json], bool], what: str, timeout: float = TIMEOUT
    ) -> Json:
        """Poll the FULL view until ``until(task)``; fail with the last view after ``timeout``."""
        deadline = time.monotonic() + timeout
        task = self.get(task_id)
        while not until(task):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"task {task_id}: not {what} after {timeout:.0f}s; last seen:\n"
                    + json.dumps(task, indent=2, sort_keys=True)
                    + "\n"
                    + diagnose(task_id)
                )
            time.sleep(2)
            task = self.get(task_id)
        return task

    def finish(self, task_id: str, timeout: float = TIMEOUT) -> Json:
        """Wait for a terminal state."""
        return self.wait(task_id, lambda t: t["state"] in TERMINAL, "terminal", timeout)


def system_logs(task: Json) -> str:
    """Return every attempt's system logs, one line each."""
    return "\n".join(
        line for log in task.get("logs") or () for line in log.get("system_logs") or ()
    )


def diagnose(task_id: str) -> str:
    """Return what the cluster says about a task, for failure messages."""
    parts = []
    # Kueue names a Job's Workload job-<job name>-<hash> and does not copy our labels onto it.
    workloads = kubectl("-n", TASK_NS, "get", "workloads", "-o", "name", check=False).stdout
    mine = [name for name in workloads.split() if task_id in name]
    for args in (
        ("-n", TASK_NS, "get", "job,pod", "-l", f"kueue-tes/task-id={task_id}", "-o", "wide"),
        *(("-n", TASK_NS, "describe", name) for name in mine),
        ("-n", CONTROL_NS, "logs", "deploy/kueue-tes-watcher", "--tail=40"),
        ("-n", CONTROL_NS, "logs", "deploy/kueue-tes-worker", "--tail=20"),
    ):
        done = kubectl(*args, check=False, timeout=60)
        parts.append(f"$ kubectl {' '.join(args)}\n{done.stdout}{done.stderr}")
    return "\n".join(parts)


def example(name: str) -> Json:
    """Return an example task of manifests/examples."""
    task: Json = json.loads((ROOT / "manifests" / "examples" / name).read_text())
    return task
