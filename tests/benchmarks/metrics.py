"""The cost of metrics: GetTask MINIMAL with request metrics on against off, through gunicorn,
and the cost of one scrape of /metrics over 100,000 stored tasks."""

from __future__ import annotations

import http.client
import statistics
import tempfile
import time
from pathlib import Path

from tests.benchmarks import seed
from tests.benchmarks.api import CREATE_BODY, SERVICE_INFO, TASKS, _env, seeded_server
from tests.benchmarks.harness import (
    HOST,
    Load,
    LoadGenerator,
    Row,
    gunicorn_server,
    latency,
    note,
    redis_server,
    request,
)

MIN_RATIO = 0.9  # the target: GetTask with metrics on >= 0.9 of metrics off
MAX_SCRAPE_RATIO = 20.0  # own choice: a scrape over 100,000 tasks costs at most 20 GetTasks


def gettask(gen: LoadGenerator, rounds: int) -> list[Row]:
    """Requests/s of GetTask MINIMAL with KUEUE_TES_METRICS on, against off (the reference).

    One gunicorn worker per server (still in multiprocess mode, as `kueue-tes api` always is):
    with several, how the load generator's connections happen to spread over a server's
    workers moves its throughput by a third from one run to the next, far more than metrics.
    """
    workers = 1
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        with redis_server(work) as redis_url:
            env = _env(work, redis_url, workers)
            with (
                gunicorn_server("tes", work, env | {"KUEUE_TES_METRICS": "false"}, SERVICE_INFO)
                as off,
                gunicorn_server("tes", work, env | {"KUEUE_TES_METRICS": "true"}, SERVICE_INFO)
                as on,
            ):  # fmt: skip
                status, body = request(on, "POST", TASKS, CREATE_BODY)
                if status != 200:
                    raise RuntimeError(f"CreateTask failed: HTTP {status}: {body}")
                path = f"{TASKS}/{body['id']}"  # one SQLite file: both servers see the task
                if request(off, "GET", "/metrics")[0] != 404:
                    raise RuntimeError("the server with metrics off still serves /metrics")
                # ABBA rounds: off, on, on, off, so that a drift in the machine's load hits
                # both alike; each round gives one ratio, and the median of them counts.
                best: dict[str, Load] = {}
                ratios: list[float] = []
                for i in range(rounds):
                    got: dict[str, list[float]] = {"off": [], "on": []}
                    for name, port in (("off", off), ("on", on), ("on", on), ("off", off)):
                        note(f"metrics: GetTask with metrics {name}, round {i + 1} of {rounds}")
                        load = gen.run(port, "GET", path, None)
                        got[name].append(load.rps)
                        seen = best.get(name)
                        errors = load.errors + (seen.errors if seen else 0)
                        best[name] = Load(max(load.rps, seen.rps if seen else 0.0), errors)
                    ratios.append(sum(got["on"]) / sum(got["off"]))
                scraped = request_text(on, "/metrics")
                counted = [
                    line
                    for line in scraped.splitlines()
                    if line.startswith("kueue_tes_api_requests_total{")
                    and 'operation="GetTask"' in line
                    and 'code="200"' in line
                ]
                if not counted:
                    raise RuntimeError("the server with metrics on did not count GetTask")
    ratio = statistics.median(ratios)
    spread = f"rounds {min(ratios):.2f}-{max(ratios):.2f}"
    return [
        Row(
            "GetTask MINIMAL, metrics off (reference; 1 gunicorn worker each)",
            f"{best['off'].rps:,.0f} req/s (best)",
        ),
        Row(
            f"GetTask MINIMAL, metrics on (median ratio of {rounds} ABBA rounds; {spread})",
            f"{best['on'].rps:,.0f} req/s (best)"
            + (f" ({best['on'].errors} errors)" if best["on"].errors else ""),
            reference=f"{best['off'].rps:,.0f} req/s",
            ratio=f"{ratio:.2f}",
            target=f">= {MIN_RATIO:.2f}",
            ok=ratio >= MIN_RATIO and not best["on"].errors,
        ),
    ]


def request_text(port: int, path: str) -> str:
    """GET ``path`` and return the body as text."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def scrape(workers: int, count: int = 100) -> list[Row]:
    """Latency of GET /metrics over the 100,000 seeded tasks, against GetTask MINIMAL."""
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        db = seed.seeded_db(work / "data" / "tasks.db")
        with seeded_server(work, workers, db) as (port, task):
            [get] = latency(port, task)
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
            samples = []
            try:
                for i in range(count + 10):
                    start = time.perf_counter()
                    conn.request("GET", "/metrics")
                    body = conn.getresponse().read()
                    if i >= 10:  # the first ones warm up
                        samples.append(time.perf_counter() - start)
            finally:
                conn.close()
            total = sum(
                float(line.rsplit(" ", 1)[1])
                for line in body.decode().splitlines()
                if line.startswith("kueue_tes_tasks{")
            )
            if int(total) != seed.TASKS:
                raise RuntimeError(f"kueue_tes_tasks sums to {total}, not {seed.TASKS}")
    median = statistics.median(samples)
    ratio = median / get.median
    return [
        Row(
            f"GET /metrics over {seed.TASKS:,} tasks (kueue_tes_tasks sums to them)",
            f"{median * 1000:.2f} ms (n={len(samples)})",
            reference=f"{get.median * 1000:.2f} ms GetTask",
            ratio=f"{ratio:.1f}x",
            target=f"<= {MAX_SCRAPE_RATIO:g}x",
            ok=ratio <= MAX_SCRAPE_RATIO,
        )
    ]


def in_process(blocks: int = 40, per_block: int = 2000) -> list[Row]:
    """The app's own cost per GetTask MINIMAL, metrics on against off, called in process.

    No server and no network: the ASGI app of ``create_app`` is called directly, blocks of
    requests taking turns between the two apps, so that the few microseconds metrics add are
    not lost in the noise of a shared machine. The median block counts.
    """
    import asyncio
    import warnings

    from app.main import create_app
    from app.models import State
    from app.store.base import TaskRecord
    from app.store.sqlite import SqliteStore
    from tests.benchmarks.harness import free_port
    from tests.conftest import make_settings

    warnings.filterwarnings("ignore")
    task_id = "01hzzzzzzzzzzzzzzzzzzzzzzz"
    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": f"{TASKS}/{task_id}", "raw_path": f"{TASKS}/{task_id}".encode(),
        "query_string": b"", "headers": [], "root_path": "",
        "client": (HOST, 1), "server": (HOST, 8000),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    async def block(app: object) -> float:
        start = time.perf_counter()
        for _ in range(per_block):
            await app(scope, receive, send)  # type: ignore[operator]
        return (time.perf_counter() - start) / per_block

    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        store = SqliteStore(work / "tasks.db")
        store.create(TaskRecord(task_id, State.QUEUED, "anonymous", {"id": task_id}))
        apps = {
            enabled: create_app(
                make_settings(work, redis_url=f"redis://{HOST}:{free_port()}/0", metrics=enabled),
                store,
            )
            for enabled in (False, True)
        }

        async def run() -> dict[bool, list[float]]:
            times: dict[bool, list[float]] = {False: [], True: []}
            for app in apps.values():
                await block(app)  # warm-up
            for _ in range(blocks):
                for enabled, app in apps.items():
                    times[enabled].append(await block(app))
            return times

        times = asyncio.run(run())
        store.close()
    if set(statuses) != {200}:
        raise RuntimeError(f"GetTask answered {sorted(set(statuses))}")
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return [
        Row(
            "in process: the app's own cost per GetTask, metrics on (no server, median block)",
            f"{on * 1e6:.1f} µs",
            reference=f"{off * 1e6:.1f} µs off",
            ratio=f"+{(on - off) * 1e6:.1f} µs",
        )
    ]
