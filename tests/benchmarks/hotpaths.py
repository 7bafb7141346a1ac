"""The hot paths of issue 12: CreateTask, BASIC pages and submission, each against a reference.

* ``create``: CreateTask through gunicorn under the load generator (16 connections), against
  a bare Starlette endpoint doing the same work (``reference.create_app``), served the same
  way: requests/s, p50 and p99. Targets: >= 0.5 of the reference's rate; p99 <= 4x p50.
* ``pages``: one page of 256 tasks in the BASIC (and FULL) view over 100,000 stored tasks,
  against GetTask MINIMAL on the same connection, taking turns. Target: <= 5x.
* ``submission``: tasks/s from one RQ worker into KubernetesCluster against kmock's emulator,
  for a burst of tasks sent through CreateTask by concurrent clients and for one task per RQ
  job. Target: >= 300 tasks/s.
"""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import redis
from rq import Queue

from app import queue, views
from app.models import View
from app.settings import Settings
from app.store.base import TaskFilter
from app.store.sqlite import SqliteStore
from tests.benchmarks import api, seed, submit
from tests.benchmarks.harness import (
    HOST,
    Latency,
    Load,
    LoadGenerator,
    Row,
    gunicorn_server,
    latency,
    note,
    redis_server,
    request,
)
from worker import context

TASKS = api.TASKS
CREATE_BODY = api.CREATE_BODY
MIN_CREATE_RATIO = 0.5
MAX_TAIL = 4.0  # p99 / p50
MAX_PAGE_RATIO = 5.0
ROUNDS = 3


# -- CreateTask ---------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.1f} ms"


def _median_load(loads: list[Load]) -> Load:
    """The round of median rate, with its own latencies (so rate and tail belong together)."""
    ranked = sorted(loads, key=lambda load: load.rps)
    middle = ranked[(len(ranked) - 1) // 2]
    return Load(
        rps=middle.rps, errors=sum(load.errors for load in loads), p50=middle.p50, p99=middle.p99
    )


def create(gen: LoadGenerator, workers: int, rounds: int) -> list[Row]:
    """CreateTask against the bare Starlette endpoint doing the same work, taking turns."""
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        with redis_server(work) as redis_url:
            ours_env = api._env(work / "ours", redis_url, workers)
            ref_env = api._env(work / "ref", redis_url, workers)
            with (
                gunicorn_server("starlette-create", work, ref_env, api.SERVICE_INFO) as ref,
                gunicorn_server("tes", work, ours_env, api.SERVICE_INFO) as port,
            ):
                for on in (ref, port):
                    status, body = request(on, "POST", TASKS, CREATE_BODY)
                    if status != 200 or set(body) != {"id"}:
                        raise RuntimeError(f"CreateTask failed on port {on}: {status} {body}")
                seen: dict[str, list[Load]] = {"reference": [], "ours": []}
                for i in range(rounds):
                    for name, on in (("reference", ref), ("ours", port)):
                        note(f"create: {name}, round {i + 1} of {rounds}")
                        seen[name].append(gen.run(on, "POST", TASKS, CREATE_BODY))
    ref_load, ours = _median_load(seen["reference"]), _median_load(seen["ours"])
    ratio = ours.rps / ref_load.rps
    tail = None if ours.p50 is None or ours.p99 is None else ours.p99 / ours.p50
    ref_tail = None if ref_load.p50 is None or ref_load.p99 is None else ref_load.p99 / ref_load.p50
    errors = f" ({ours.errors} errors)" if ours.errors else ""
    return [
        Row(
            "bare Starlette CreateTask, same work (reference)",
            f"{ref_load.rps:,.0f} req/s"
            + (f" ({ref_load.errors} errors)" if ref_load.errors else ""),
            ratio="-",
        ),
        Row(
            "CreateTask req/s",
            f"{ours.rps:,.0f} req/s{errors}",
            reference=f"{ref_load.rps:,.0f} req/s",
            ratio=f"{ratio:.2f}",
            target=f">= {MIN_CREATE_RATIO:.2f}",
            ok=ratio >= MIN_CREATE_RATIO and not ours.errors,
        ),
        Row(
            "CreateTask p50 / p99",
            f"{_ms(ours.p50)} / {_ms(ours.p99)}",
            reference=f"{_ms(ref_load.p50)} / {_ms(ref_load.p99)}",
            ratio="?" if tail is None else f"p99 = {tail:.1f}x p50",
            target=f"p99 <= {MAX_TAIL:g}x p50",
            ok=None if tail is None else tail <= MAX_TAIL,
        ),
        Row(
            "  reference p99 / p50",
            "?" if ref_tail is None else f"{ref_tail:.1f}x",
        ),
    ]


# -- BASIC and FULL pages -----------------------------------------------------------------------

#: The pages timed: (label, view, query), each one page of 256 over 100,000 tasks.
PAGES = [
    ("no filter", "BASIC", ""),
    ("state=COMPLETE", "BASIC", "state=COMPLETE"),
    ("tag project=proj-3", "BASIC", "tag_key=project&tag_value=proj-3"),
    ("name_prefix=align-", "BASIC", "name_prefix=align-"),
    ("no filter", "FULL", ""),
    ("no filter", "MINIMAL", ""),
    ("name_prefix=align-", "MINIMAL", "name_prefix=align-"),
]


def _page_row(name: str, lat: Latency, ref: Latency, targeted: bool, ok: bool = True) -> Row:
    ratio = lat.median / ref.median
    return Row(
        name,
        f"{lat.median * 1000:.2f} ms (p90 {lat.p90 * 1000:.2f}, n={len(lat.samples)})",
        reference=f"{ref.median * 1000:.2f} ms",
        ratio=f"{ratio:.1f}x",
        target=f"<= {MAX_PAGE_RATIO:g}x" if targeted else "-",
        ok=(ok and ratio <= MAX_PAGE_RATIO) if targeted else None,
    )


def _in_process(db: Path, rounds: int = 20) -> list[Row]:
    """A page of 256 in the store: from the stored views, against rendering the docs."""
    store = SqliteStore(db)
    try:
        flt = TaskFilter()
        joined, rendered = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            page = store.list_rendered(flt, api.PAGE_SIZE, view=View.BASIC)
            views.page_json(page.tasks, page.last_id)
            joined.append(time.perf_counter() - started)
            started = time.perf_counter()
            records = store.list(flt, api.PAGE_SIZE).records
            json.dumps({"tasks": [views.render(r.doc, View.BASIC) for r in records]})
            rendered.append(time.perf_counter() - started)
    finally:
        store.close()
    new, old = statistics.median(joined), statistics.median(rendered)
    return [
        Row(
            "part: in the store, BASIC page from stored views vs rendered from docs",
            f"{new * 1000:.2f} ms",
            reference=f"{old * 1000:.2f} ms",
            ratio=f"{new / old:.2f}",
        )
    ]


def pages(workers: int, max_seconds: float) -> list[Row]:
    """One page of 256 in the BASIC and FULL views, against GetTask MINIMAL, taking turns."""
    specs = seed.specs()
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        db = seed.seeded_db(work / "data" / "tasks.db")
        rows = _in_process(db)
        with api.seeded_server(work, workers, db) as (port, task):
            note("pages: GetTask")
            for view in ("BASIC", "FULL"):
                lat, ref = latency(port, f"{task}?view={view}", task, max_seconds=max_seconds)
                rows.append(_page_row(f"GetTask {view}", lat, ref, targeted=False))
            for label, view, query in PAGES:
                note(f"pages: ListTasks {view} {label}")
                path = f"{TASKS}?view={view}" + (f"&{query}" if query else "")
                lat, ref = latency(port, path, task, max_seconds=max_seconds)
                flt = dict(urllib.parse.parse_qsl(query))
                tags = {flt["tag_key"]: flt["tag_value"]} if "tag_key" in flt else {}
                matching = sum(
                    seed.matches(s, flt.get("name_prefix", ""), flt.get("state", ""), tags)
                    for s in specs
                )
                right = len(lat.body.get("tasks", [])) == min(api.PAGE_SIZE, matching)
                name = f"ListTasks {view:<7} {label} [{matching:,}]"
                if not right:
                    name += " WRONG PAGE"
                rows.append(_page_row(name, lat, ref, targeted=view != "MINIMAL", ok=right))
    return rows


# -- submission ---------------------------------------------------------------------------------

MIN_SUBMIT_RATE = 300.0  # tasks per second (issue 12)


def _burst(port: int, count: int, connections: int) -> float:
    """Send ``count`` CreateTask requests over ``connections`` keep-alive connections at once."""
    body = json.dumps(submit._body()).encode()
    failures: list[str] = []

    def send(share: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            for _ in range(share):
                conn.request("POST", TASKS, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200:
                    failures.append(f"HTTP {response.status}: {answer[:200]!r}")
        finally:
            conn.close()

    shares = [count // connections + (i < count % connections) for i in range(connections)]
    threads = [threading.Thread(target=send, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} CreateTask requests failed, e.g. {failures[0]}")
    return time.perf_counter() - started


def _enqueued(connection: redis.Redis, settings: Settings, count: int) -> list[list[str]]:
    """Wait until the API has enqueued ``count`` tasks; return the jobs' task ids."""
    submits = Queue(settings.rq_queue, connection=connection)
    deadline = time.monotonic() + 60
    while True:
        groups = [list(job.args) for job in submits.get_jobs()]
        if sum(map(len, groups)) >= count:
            return groups
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sum(map(len, groups))} of {count} tasks were enqueued")
        time.sleep(0.05)


def _drain(
    settings: Settings, store: SqliteStore, connection: redis.Redis, tasks: list[str]
) -> float:
    """Time one burst worker draining the queue into KubernetesCluster on a fresh emulator."""
    with submit._mock() as (api_server, cluster):
        context.install(context.Context(settings=settings, store=store, cluster=cluster))
        started = time.perf_counter()
        queue.run_worker(settings, connection, burst=True)
        elapsed = time.perf_counter() - started
        submit._verify(api_server, store, tasks)
    return elapsed


def submission(tasks: int, connections: int, workers: int) -> list[Row]:
    """Tasks/s from one RQ worker into KubernetesCluster: a burst sent through CreateTask by
    ``connections`` clients (grouped as the API groups them), and one task per RQ job."""
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        with redis_server(work) as redis_url:
            connection = redis.Redis.from_url(redis_url)
            env = api._env(work, redis_url, workers)
            settings = submit._settings(work, redis_url).model_copy(
                update={"sqlite_path": work / "data" / "tasks.db"}
            )
            bursts: list[tuple[float, int]] = []
            drained: list[float] = []
            with gunicorn_server("tes", work, env, api.SERVICE_INFO) as port:
                store = SqliteStore(settings.store_path())
                try:
                    for i in range(ROUNDS + 1):  # the first warms up
                        note(f"submission: a burst of {tasks} CreateTask, round {i + 1}")
                        connection.flushdb()
                        sent = _burst(port, tasks, connections)
                        groups = _enqueued(connection, settings, tasks)
                        ids = [task_id for group in groups for task_id in group]
                        seconds = _drain(settings, store, connection, ids)
                        if i:
                            bursts.append((sent, len(groups)))
                            drained.append(seconds)
                finally:
                    store.close()
            single, direct, called, noops = [], [], [], []
            for i in range(ROUNDS + 1):
                note(f"submission: one task per job and the parts, round {i + 1}")
                times = (
                    submit._rq_round(work, redis_url, connection, tasks),
                    submit._direct_round(settings, tasks),
                    submit._jobs_round(work, redis_url, tasks),
                    submit._noop_round(settings, connection, tasks),
                )
                if i:
                    for seen, seconds in zip((single, direct, called, noops), times, strict=True):
                        seen.append(seconds)
            connection.close()
    grouped = tasks / min(drained)
    jobs = statistics.median(count for _, count in bursts)
    created = tasks / statistics.median(sent for sent, _ in bursts)
    one, bare = tasks / min(single), tasks / min(direct)
    return [
        Row(
            f"RQ -> KubernetesCluster, a burst of {tasks} CreateTask from {connections} clients "
            f"({jobs:.0f} RQ jobs, {tasks / jobs:.1f} tasks each)",
            f"{grouped:,.0f} tasks/s",
            reference=f"{bare:,.0f} calls/s",
            ratio=f"{grouped / bare:.2f}",
            target=f">= {MIN_SUBMIT_RATE:,.0f} tasks/s",
            ok=grouped >= MIN_SUBMIT_RATE,
        ),
        Row(
            f"RQ -> KubernetesCluster, one task per RQ job ({tasks} jobs)",
            f"{one:,.0f} tasks/s",
            reference=f"{bare:,.0f} calls/s",
            ratio=f"{one / bare:.2f}",
        ),
        Row(
            "part: jobs.submit in a loop (store + manifests + cluster, no RQ)",
            f"{tasks / min(called):,.0f} tasks/s",
            reference=f"{bare:,.0f} calls/s",
            ratio=f"{min(direct) / min(called):.2f}",
        ),
        Row(
            "part: RQ no-op jobs through the same burst worker", f"{tasks / min(noops):,.0f} jobs/s"
        ),
        Row("part: the bursts' CreateTask rate (16 Python clients)", f"{created:,.0f} tasks/s"),
    ]
