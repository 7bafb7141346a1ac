"""GET /metrics of a real `kueue-tes serve` and of `kueue-tes api` under gunicorn, parsed with
prometheus_client's own parser: the counts and histogram buckets match what happened."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port
from tests.integration.e2e_support import Server, serve_env, serving, show

Json = dict[str, Any]
Samples = list[tuple[str, dict[str, str], float]]
_GET_TASK = re.compile(r"^/tasks/[^/:?]+(\?.*)?$")


def scrape(base: str) -> Samples:
    """Fetch /metrics at ``base`` and return every sample, parsed as Prometheus parses it."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for n, got, v in samples if n == name and labels.items() <= got.items())


def buckets(samples: Samples, name: str, **labels: str) -> dict[float, float]:
    """A histogram's cumulative buckets: upper bound -> count."""
    return {
        float(got["le"]): v
        for n, got, v in samples
        if n == f"{name}_bucket" and labels.items() <= got.items()
    }


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def expect_buckets(observed: list[float], bounds: list[float]) -> dict[float, float]:
    """What a histogram holds after ``observed``: per bound, how many are at most it."""
    return {b: float(sum(v <= b for v in observed)) for b in bounds}


def counting(server: Server) -> dict[tuple[str, str], int]:
    """Count the requests the test sends through ``server.call``, by method and kind of path."""
    sent: dict[tuple[str, str], int] = {}
    call = server.call

    def counted(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, answer = call(method, path, body)
        kind = "GetTask" if method == "GET" and _GET_TASK.match(path) else path
        sent[(kind, str(status))] = sent.get((kind, str(status)), 0) + 1
        return status, answer

    server.call = counted  # type: ignore[method-assign]
    return sent


def _until(server: Server, task_id: str, check: Any, timeout: float = 60) -> Json:
    deadline = time.monotonic() + timeout
    while True:
        task = server.get(task_id)
        if check(task):
            return task
        assert time.monotonic() < deadline, show(task)
        time.sleep(0.1)


def test_serve_metrics_match_what_happened(tmp_path: Path) -> None:
    """Tasks that ran, queued behind a 1-cpu quota, failed and were cancelled while queued."""
    env = serve_env({"KUEUE_TES_LOCAL_CPU": "1", "KUEUE_TES_SIDECAR_CPU": "0"})
    one_cpu = {"resources": {"cpu_cores": 1}}
    with serving(tmp_path / "data", env) as server:
        sent = counting(server)
        base = server.base.removesuffix("/ga4gh/tes/v1")
        first = server.create({**one_cpu, "executors": [{"image": "a", "command": ["sleep", "1"]}]})
        second = server.create({**one_cpu, "executors": [{"image": "a", "command": ["true"]}]})
        doomed = server.create({**one_cpu, "executors": [{"image": "a", "command": ["true"]}]})
        failing = server.create(
            {**one_cpu, "executors": [{"image": "a", "command": ["sh", "-c", "exit 3"]}]}
        )
        # The third waits behind the quota, and says so, before it is cancelled.
        waiting = _until(
            server,
            doomed,
            lambda t: any(
                "insufficient unused quota" in line
                for attempt in t.get("logs", [])
                for line in attempt.get("system_logs", [])
            ),
        )
        assert waiting["state"] == "QUEUED", show(waiting)
        server.cancel(doomed)
        assert server.call("GET", "/tasks/no-such-task")[0] == 404
        assert server.call("POST", "/tasks", {"executors": []})[0] == 400
        done = server.wait_all([first, second, doomed, failing])
        assert [done[t]["state"] for t in (first, second, doomed, failing)] == [
            "COMPLETE",
            "COMPLETE",
            "CANCELED",
            "EXECUTOR_ERROR",
        ], {t: show(d) for t, d in done.items()}
        samples = scrape(base)

    # Tasks by state and LocalQueue: every state of the queue, zeros included.
    tasks = {got["state"]: v for n, got, v in samples if n == "kueue_tes_tasks"}
    assert {got["queue"] for n, got, _ in samples if n == "kueue_tes_tasks"} == {"tes"}
    assert tasks["COMPLETE"] == 2 and tasks["CANCELED"] == 1 and tasks["EXECUTOR_ERROR"] == 1
    assert tasks["QUEUED"] == tasks["RUNNING"] == tasks["SYSTEM_ERROR"] == 0
    assert "UNKNOWN" not in tasks

    # Queue wait: one observation per admission, each from creation to Kueue's admission as the
    # task's own timestamps say; the cancelled task was never admitted.
    ran = [done[t] for t in (first, second, failing)]
    # (Kubernetes times have whole seconds: an admission may seem to precede the creation.)
    waits = [max(0.0, epoch(t["logs"][0]["start_time"]) - epoch(t["creation_time"])) for t in ran]
    wait = buckets(samples, "kueue_tes_task_queue_wait_seconds", queue="tes")
    assert wait == expect_buckets(waits, list(wait)), (wait, waits)
    assert wait[math.inf] == 3
    assert value(samples, "kueue_tes_task_queue_wait_seconds_sum") == pytest.approx(sum(waits))
    assert waits[1] > 0  # the second waited behind the quota while the first ran

    # Run time, from admission to the end, by final state.
    for state, finished in (("COMPLETE", ran[:2]), ("EXECUTOR_ERROR", ran[2:])):
        runs = [
            epoch(t["logs"][-1]["end_time"]) - epoch(t["logs"][-1]["start_time"]) for t in finished
        ]
        got = buckets(samples, "kueue_tes_task_run_seconds", queue="tes", state=state)
        assert got == expect_buckets(runs, list(got)), (state, got, runs)
    assert not buckets(samples, "kueue_tes_task_run_seconds", state="CANCELED")

    # Submissions: all four became Jobs; none failed.
    assert value(samples, "kueue_tes_submissions_total", queue="tes") == 4
    assert value(samples, "kueue_tes_submission_failures_total") == 0

    # API requests by operation and status: exactly what this test sent.
    def requests(operation: str, code: str) -> float:
        return value(samples, "kueue_tes_api_requests_total", operation=operation, code=code)

    assert requests("CreateTask", "200") == sent[("/tasks", "200")] == 4
    assert requests("CreateTask", "400") == 1
    assert requests("CancelTask", "200") == 1
    assert requests("GetTask", "404") == 1
    assert requests("GetTask", "200") == sent[("GetTask", "200")]
    latency_count = value(
        samples, "kueue_tes_api_request_duration_seconds_count", operation="GetTask"
    )
    assert latency_count == sent[("GetTask", "200")] + 1
    # The service-info probes of the start-up are counted, /metrics itself is not.
    assert requests("GetServiceInfo", "200") >= 1
    assert not [got for n, got, _ in samples if got.get("operation") in ("metrics", "/metrics")]
    # No task id ever becomes a label value.
    labels = {v for _, got, _ in samples for v in got.values()}
    assert not labels & {first, second, doomed, failing}

    # The watcher is current.
    assert 0 <= value(samples, "kueue_tes_watcher_lag_seconds") < 60


@contextmanager
def api_server(tmp_path: Path, redis_url: str, workers: int) -> Iterator[str]:
    """Run `kueue-tes api` (gunicorn, ``workers`` uvicorn workers) on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUEUE_TES_", "PROMETHEUS"))}
    env.update(
        KUEUE_TES_REDIS_URL=redis_url,
        KUEUE_TES_WORKERS=str(workers),
        KUEUE_TES_DATA_DIR=str(tmp_path / "data"),
        KUEUE_TES_PORT=str(port),
        TMPDIR=str(tmp_path),
    )
    log = tmp_path / "api.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api"], cwd=ROOT, env=env, stdout=sink, stderr=sink
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/ga4gh/tes/v1/service-info", timeout=5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.mark.redis
def test_api_metrics_add_up_across_gunicorn_workers(tmp_path: Path, redis_db: str) -> None:
    """Under two gunicorn workers every scrape, whichever worker answers it, sums both."""
    with api_server(tmp_path, redis_db, workers=2) as base:
        directories = list(tmp_path.glob("kueue-tes-metrics-*"))
        assert len(directories) == 1, "one fresh multiprocess directory per start"
        server = Server(subprocess.Popen(["true"]), f"{base}/ga4gh/tes/v1", tmp_path / "api.log")
        task_id = server.create({"executors": [{"image": "a", "command": ["true"]}]})
        # Fresh connections, so that gunicorn hands them to both workers.
        for _ in range(40):
            assert server.call("GET", f"/tasks/{task_id}")[0] == 200
        # Each worker adds its counts to the shared files within a second (app/meter.py).
        deadline = time.monotonic() + 30
        while value(scrape(base), "kueue_tes_api_requests_total", operation="GetTask") < 40:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        pids = {p.name.split("_")[-1] for p in directories[0].glob("*.db")}
        scraped = [scrape(base) for _ in range(8)]
        for samples in scraped:
            got = value(samples, "kueue_tes_api_requests_total", operation="GetTask", code="200")
            assert got == 40
            assert value(samples, "kueue_tes_api_requests_total", operation="CreateTask") == 1
            assert value(samples, "kueue_tes_tasks", state="QUEUED", queue="tes") == 1
        assert pids  # each worker that served writes its own files there
    assert not list(tmp_path.glob("kueue-tes-metrics-*")), "removed when the API stops"


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    """KUEUE_TES_METRICS=false: no /metrics and no counting; on: the text format, HEAD too."""
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.store.sqlite import SqliteStore
    from tests.conftest import make_settings

    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # never reached by these requests
    for enabled in (False, True):
        settings = make_settings(tmp_path, redis_url=redis_url, metrics=enabled)
        store = SqliteStore(tmp_path / f"{enabled}.db")
        with TestClient(create_app(settings, store)) as client:
            response = client.get("/metrics")
            if not enabled:
                assert response.status_code == 404
                continue
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "# TYPE kueue_tes_api_requests_total counter" in response.text
            head = client.head("/metrics")
            assert head.status_code == 200 and head.content == b""
        store.close()
