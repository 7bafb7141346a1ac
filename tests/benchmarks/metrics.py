"""The cost of metrics: GetTask MINIMAL with request metrics on against off, through gunicorn,
and the cost of one scrape of /metrics over 100,000 stored tasks."""

from __future__ import annotations

import http.client
import statistics
import tempfile
import time
from pathlib import Path

from tests.benchmarks import seed
from tests.benchmarks.api import CREATE_BODY, SERVICE_INFO, TASKS, _env, _rps_row
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


def gettask(gen: LoadGenerator, workers: int, rounds: int) -> list[Row]:
    """Requests/s of GetTask MINIMAL with KUEUE_TES_METRICS on, against off (the reference)."""
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
                best: dict[str, Load] = {}
                for i in range(rounds):
                    for name, port in (("off", off), ("on", on)):
                        note(f"metrics: GetTask with metrics {name}, round {i + 1} of {rounds}")
                        load = gen.run(port, "GET", path, None)
                        seen = best.get(name)
                        if seen is None or load.rps > seen.rps:
                            best[name] = Load(load.rps, load.errors + (seen.errors if seen else 0))
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
    row = _rps_row("GetTask MINIMAL, metrics on", best["on"], best["off"])
    ratio = best["on"].rps / best["off"].rps
    return [
        Row("GetTask MINIMAL, metrics off (reference)", f"{best['off'].rps:,.0f} req/s"),
        Row(
            row.name,
            row.value,
            reference=row.reference,
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
        with redis_server(work) as redis_url:
            env = _env(work, redis_url, workers) | {"KUEUE_TES_SQLITE_PATH": str(db)}
            with gunicorn_server("tes", work, env, SERVICE_INFO) as port:
                status, page = request(port, "GET", f"{TASKS}?page_size=1")
                if status != 200 or not page.get("tasks"):
                    raise RuntimeError(f"cannot find a seeded task: HTTP {status}: {page}")
                [get] = latency(port, f"{TASKS}/{page['tasks'][0]['id']}")
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
