"""The local runtime benchmark of design section 14: per-executor overhead, task throughput,
and the fixed cost of a task (one `true` executor) next to its sandboxes run by hand.

Everything goes through the HTTP API of a real ``kueue-tes serve`` (API, embedded queue and
worker, watcher, local runtime in one process), the way a user runs it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.benchmarks.handrun import run_pod_by_hand
from tests.benchmarks.harness import HOST, ROOT, Row, _stop, _tail, free_port, note

TASKS = "/ga4gh/tes/v1/tasks"
SERVICE_INFO = "/ga4gh/tes/v1/service-info"
EXECUTORS = 20
MAX_OVERHEAD_MS = 50.0
MAX_FIXED_SECONDS = 0.3
FIXED_SAMPLES = 5  # one-executor tasks per round, each after its pod run by hand
TERMINAL = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"})
#: The image is recorded and ignored by the local runtime in host mode: ``true`` is the host's.
TRUE = {"image": "busybox", "command": ["true"]}
POLL_SECONDS = 0.02
BURST_POLL_SECONDS = 0.1
TASK_TIMEOUT = 60.0


# -- a kueue-tes serve process ------------------------------------------------------------------


class Client:
    """JSON requests on one keep-alive connection, reopened after a pause.

    uvicorn closes a connection idle for 5 s; a new one after 2 s of silence never meets a
    closed one, and no request (a CreateTask) is ever sent twice.
    """

    IDLE_SECONDS = 2.0

    def __init__(self, port: int, log: Path) -> None:
        """Talk to the server on ``port`` of loopback, whose output goes to ``log``."""
        self.port, self.log = port, log
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.used = time.monotonic()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded body, raise unless HTTP 200."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if time.monotonic() - self.used > self.IDLE_SECONDS:
            self.conn.close()  # the next request connects again
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        self.used = time.monotonic()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
        return json.loads(raw) if raw else None

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def failure(self, task_id: str) -> RuntimeError:
        """Return an error showing a task that did not COMPLETE and what the server said."""
        task = self.call("GET", f"{TASKS}/{task_id}?view=FULL")
        lines = [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if task_id in line or "Traceback" in line or "ERROR" in line
        ]
        return RuntimeError(
            f"task {task_id} ended {task['state']}: {json.dumps(task)[:3000]}\n"
            "the server's log about it:\n" + "\n".join(lines[-30:])
        )


@contextmanager
def serve(work: Path, env: dict[str, str] | None = None) -> Iterator[Client]:
    """Run ``kueue-tes serve`` on a free port with its own data directory; yield a client.

    The server's log is checked for tracebacks when it stops: a benchmark of a server that
    failed somewhere measures nothing.
    """
    port = free_port()
    log = work / f"serve-{port}.log"
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("KUEUE_TES")}
    # `true` is the host's: images are not pulled unless a benchmark asks (images.py does).
    full_env.update({"KUEUE_TES_LOCAL_IMAGES": "host", **(env or {})})
    argv = [sys.executable, "-m", "app.cli", "serve", "--host", HOST, "--port", str(port),
            "--data-dir", str(work / f"data-{port}")]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    client = Client(port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.call("GET", SERVICE_INFO)
                break
            except (OSError, http.client.HTTPException):
                client.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kueue-tes serve did not start; its log:\n{_tail(log)}")
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        _stop(proc)
    text = log.read_text(errors="replace")
    if "Traceback" in text:
        raise RuntimeError(f"kueue-tes serve logged a traceback:\n{_tail(log, 40)}")


# -- one task -------------------------------------------------------------------------------------


def _epoch(stamp: str) -> float:
    """Return an RFC 3339 time of the server (same machine, same clock) as epoch seconds."""
    return datetime.fromisoformat(stamp).timestamp()


@dataclass(frozen=True)
class TaskRun:
    """One task from CreateTask to its terminal state, in seconds."""

    end_to_end: float  # CreateTask sent -> terminal state seen by the client
    startup: float  # CreateTask sent -> first executor's start_time
    span: float  # first executor's start_time -> last executor's end_time
    teardown: float  # last executor's end_time -> terminal state seen by the client


def run_task(client: Client, body: dict[str, Any]) -> TaskRun:
    """Create one task, poll GetTask MINIMAL until it is terminal; raise unless COMPLETE."""
    started = time.time()
    task_id = client.call("POST", TASKS, body)["id"]
    deadline = time.monotonic() + TASK_TIMEOUT
    while client.call("GET", f"{TASKS}/{task_id}")["state"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} not finished after {TASK_TIMEOUT:g} s")
        time.sleep(POLL_SECONDS)
    ended = time.time()
    task = client.call("GET", f"{TASKS}/{task_id}?view=FULL")
    if task["state"] != "COMPLETE":
        raise client.failure(task_id)
    attempt = task["logs"][-1]
    executors = attempt.get("logs") or []
    if len(executors) != len(body["executors"]) or any(e.get("exit_code") for e in executors):
        raise RuntimeError(f"task {task_id}: executor logs wrong: {json.dumps(attempt)[:2000]}")
    # (The attempt's own start_time is Kueue's admission time, to the second: too coarse.)
    first, last = _epoch(executors[0]["start_time"]), _epoch(executors[-1]["end_time"])
    return TaskRun(
        end_to_end=ended - started,
        startup=first - started,
        span=last - first,
        teardown=ended - last,
    )


def run_directly(count: int) -> float:
    """Run ``true`` ``count`` times, one after the other, as subprocesses; return the seconds."""
    true = shutil.which("true") or "/bin/true"
    start = time.perf_counter()
    for _ in range(count):
        subprocess.run([true], stdin=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def run_parts(count: int, control: Path) -> tuple[float, float]:
    """Time the two parts of an executor's cost that run outside the server, ``count`` each.

    Returns the seconds of ``true`` run by the runner (``runner.sh`` under busybox, as in an
    executor container, no sandbox) and of ``true`` in a bare sandbox of the local runtime
    (``bwrap``, no runner), each ``count`` times one after the other.
    """
    from worker.cluster.local import sandbox
    from worker.sequencer import setup

    true = shutil.which("true") or "/bin/true"
    shutil.rmtree(control, ignore_errors=True)
    setup.install(control, Path(shutil.which("busybox") or "/bin/busybox"))
    bb, runner = str(control / "bin" / "busybox"), str(control / "bin" / "runner.sh")
    start = time.perf_counter()
    for i in range(count):
        argv = [bb, "sh", runner, str(control), str(i), "", "", "", "0", "--", "true"]
        subprocess.run(argv, stdin=subprocess.DEVNULL, check=True)
    runner_seconds = time.perf_counter() - start
    codes = [(control / "exec" / str(i) / "exit_code").read_text().strip() for i in range(count)]
    if codes != ["0"] * count:
        raise RuntimeError(f"runner.sh did not run `true` as expected: exit codes {codes}")
    argv = sandbox.bwrap_argv(
        {"name": "bench", "command": [true]},
        {},
        fields={},
        termination_log=None,
        bwrap=shutil.which("bwrap") or "bwrap",
        privileged=os.geteuid() == 0,
    )
    start = time.perf_counter()
    for _ in range(count):
        subprocess.run(argv, stdin=subprocess.DEVNULL, check=True)
    return runner_seconds, time.perf_counter() - start


# -- throughput -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """Trivial tasks submitted at once, until the last is terminal."""

    tasks: int
    seconds: float
    at_once: int  # the most tasks INITIALIZING or RUNNING at one poll

    @property
    def per_minute(self) -> float:
        """Tasks completed per minute."""
        return self.tasks / self.seconds * 60


def burst(client: Client, count: int, label: str) -> Burst:
    """Submit ``count`` one-executor ``true`` tasks back to back; wait until all are terminal."""
    prefix = f"burst-{label}-"
    started = time.monotonic()
    ids = {
        client.call("POST", TASKS, {"name": f"{prefix}{i}", "executors": [TRUE]})["id"]
        for i in range(count)
    }
    at_once = 0
    deadline = started + max(TASK_TIMEOUT, 10.0 * count)
    while True:
        page = client.call("GET", f"{TASKS}?name_prefix={prefix}&page_size={count + 1}")
        states = {t["id"]: t["state"] for t in page.get("tasks", [])}
        at_once = max(at_once, sum(s in {"INITIALIZING", "RUNNING"} for s in states.values()))
        if set(states) == ids and all(s in TERMINAL for s in states.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: not all {count} tasks finished in time: {states}")
        time.sleep(BURST_POLL_SECONDS)
    seconds = time.monotonic() - started
    failed = [i for i, s in states.items() if s != "COMPLETE"]
    if failed:
        note(f"runtime: {label}: {len(failed)} of {count} tasks did not COMPLETE")
        raise client.failure(failed[0])
    return Burst(count, seconds, at_once)


def pod_request() -> str:
    """Return what the pod of a one-executor task requests, as the local runtime counts it."""
    from app.settings import Settings
    from worker import jobspec
    from worker.cluster.local import admission

    task = {"id": "01hzzzzzzzzzzzzzzzzzzzzzzz", "executors": [TRUE]}
    job = jobspec.build_job(task, Settings())
    cpu = admission.pod_requests(job["spec"]["template"]["spec"])["cpu"]
    return f"{cpu / 1000:g} cpu"


# -- the benchmark --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def _each(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms ({seconds * 1000 / EXECUTORS:.1f} ms each)"


def runtime(rounds: int, tasks: int, raised_cpu: float) -> list[Row]:
    """Per-executor overhead and the fixed cost of a task; trivial tasks per minute.

    ``rounds`` tasks of ``EXECUTORS`` executors (after one warm-up task), each after running
    ``true`` as many times directly, their reference; medians. Then ``tasks`` one-executor tasks
    at once, on the default quota (this same server) and on a server whose cpu quota is
    ``raised_cpu``.
    """
    body = {"name": "overhead", "executors": [TRUE] * EXECUTORS}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        with serve(work) as client:
            note(f"runtime: a warm-up task of {EXECUTORS} executors")
            run_task(client, body)
            runs: list[TaskRun] = []
            direct: list[float] = []
            parts: list[tuple[float, float]] = []
            for i in range(rounds):
                note(f"runtime: {EXECUTORS} executors, round {i + 1} of {rounds}")
                direct.append(run_directly(EXECUTORS))
                parts.append(run_parts(EXECUTORS, work / "control"))
                runs.append(run_task(client, body))
            note(f"runtime: {tasks} trivial tasks at once, default quota")
            default = burst(client, tasks, "default")
        with serve(work, {"KUEUE_TES_LOCAL_CPU": f"{raised_cpu:g}"}) as client:
            note(f"runtime: {tasks} trivial tasks at once, quota cpu={raised_cpu:g}")
            raised = burst(client, tasks, "raised")

    def median(field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs))

    reference = statistics.median(direct)
    runner = statistics.median(runner for runner, _ in parts)
    bwrap = statistics.median(bwrap for _, bwrap in parts)
    span, e2e = median("span"), median("end_to_end")
    overhead = (span - reference) / EXECUTORS
    # Each round against its own reference; the best shows the cost on a quiet machine.
    best = min(run.span - ref for run, ref in zip(runs, direct, strict=True)) / EXECUTORS
    fixed = statistics.median(run.end_to_end - run.span for run in runs)
    cpu = os.cpu_count() or 1
    return [
        Row("load average (1 min): start -> end", f"{load:.1f} -> {os.getloadavg()[0]:.1f}"),
        Row(f"{EXECUTORS} x `true` run directly (subprocess, sequential)", _each(reference)),
        Row(
            f"executor span: 1st start -> last end (FULL logs, median of {rounds})",
            _each(span),
            reference=_ms(reference),
            ratio=f"{span / reference:.0f}x",
        ),
        Row(
            f"overhead per executor = (span - direct) / {EXECUTORS}",
            f"{overhead * 1000:.1f} ms (best round {best * 1000:.1f})",
            target=f"<= {MAX_OVERHEAD_MS:g} ms",
            ok=overhead * 1000 <= MAX_OVERHEAD_MS,
        ),
        Row(f"  part: runner.sh alone, no sandbox ({EXECUTORS} x `true`)", _each(runner)),
        Row(f"  part: bare bwrap sandbox alone ({EXECUTORS} x `true`)", _each(bwrap)),
        Row(
            f"end to end: CreateTask -> COMPLETE ({EXECUTORS} executors)",
            _ms(e2e),
            reference=_ms(reference),
            ratio=f"{e2e / reference:.0f}x",
        ),
        Row("fixed per-task overhead = end to end - span", _ms(fixed)),
        Row("  CreateTask -> 1st executor start (setup, sequencer)", _ms(median("startup"))),
        Row("  last executor end -> COMPLETE seen by the client", _ms(median("teardown"))),
        Row("pod of a one-executor task requests (admission)", pod_request()),
        Row(
            f"throughput, quota cpu={cpu} (default) [{default.at_once} at once]",
            f"{default.per_minute:,.0f} tasks/min ({default.tasks} in {default.seconds:.1f} s)",
        ),
        Row(
            f"throughput, quota cpu={raised_cpu:g} [{raised.at_once} at once]",
            f"{raised.per_minute:,.0f} tasks/min ({raised.tasks} in {raised.seconds:.1f} s)",
            reference=f"{default.per_minute:,.0f} tasks/min",
            ratio=f"{raised.per_minute / default.per_minute:.2f}x",
        ),
    ]


def fixed_cost(rounds: int) -> list[Row]:
    """The fixed cost of a task of one `true` executor, next to its pod's sandboxes by hand.

    ``rounds`` x ``FIXED_SAMPLES`` tasks through a real ``kueue-tes serve`` (after a warm-up
    task), each after the same pod's sandboxes run by hand (``handrun``), its reference;
    medians. Target (issue 12): end to end - executor span <= ``MAX_FIXED_SECONDS``.
    """
    load = os.getloadavg()[0]
    singles: list[TaskRun] = []
    by_hand: list[float] = []
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        with serve(work) as client:
            note("fixed cost: a warm-up task")
            run_task(client, {"name": "fixed", "executors": [TRUE]})
            for i in range(rounds):
                note(f"fixed cost: one-executor tasks and their pods by hand, round {i + 1}")
                for _ in range(FIXED_SAMPLES):
                    by_hand.append(run_pod_by_hand(work, [TRUE]))
                    singles.append(run_task(client, {"name": "fixed", "executors": [TRUE]}))
    hand = statistics.median(by_hand)
    single = statistics.median(run.end_to_end for run in singles)
    single_fixed = statistics.median(run.end_to_end - run.span for run in singles)
    return [
        Row("load average (1 min): start -> end", f"{load:.1f} -> {os.getloadavg()[0]:.1f}"),
        Row(
            f"one `true` executor: its pod's sandboxes run by hand (median of {len(by_hand)})",
            _ms(hand),
        ),
        Row(
            "one `true` executor: CreateTask -> COMPLETE through kueue-tes serve",
            _ms(single),
            reference=_ms(hand),
            ratio=f"{single / hand:.2f}x",
        ),
        Row(
            "fixed cost of a task = end to end - executor span (one `true` executor)",
            _ms(single_fixed),
            target=f"<= {MAX_FIXED_SECONDS * 1000:g} ms",
            ok=single_fixed <= MAX_FIXED_SECONDS,
        ),
        Row("  of it, the server's share = end to end - pod by hand", _ms(single - hand)),
        Row(
            "  CreateTask -> executor start (one `true` executor)",
            _ms(statistics.median(run.startup for run in singles)),
        ),
    ]
