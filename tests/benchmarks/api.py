"""The API benchmarks of design section 14: throughput through gunicorn, ListTasks latency."""

from __future__ import annotations

import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.benchmarks import seed
from tests.benchmarks.harness import (
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
from tests.benchmarks.launch import REFERENCE_BODY

TASKS = "/ga4gh/tes/v1/tasks"
SERVICE_INFO = "/ga4gh/tes/v1/service-info"
CREATE_BODY = {"executors": [{"image": "alpine", "command": ["echo", "hi"]}]}
PAGE_SIZE = 256  # ListTasks' default page size
MIN_RPS_RATIO = 0.50
MAX_LIST_RATIO = 5.0


def _env(work: Path, redis_url: str, workers: int) -> dict[str, str]:
    return {
        "KUEUE_TES_DATA_DIR": str(work / "data"),
        "KUEUE_TES_REDIS_URL": redis_url,
        "KUEUE_TES_WORKERS": str(workers),
    }


# -- throughput ---------------------------------------------------------------------------------


def _rps_row(name: str, load: Load, reference: Load | None) -> Row:
    value = f"{load.rps:,.0f} req/s" + (f" ({load.errors} errors)" if load.errors else "")
    if reference is None:
        return Row(name, value, ok=None if not load.errors else False)
    ratio = load.rps / reference.rps
    return Row(
        name,
        value,
        reference=f"{reference.rps:,.0f} req/s",
        ratio=f"{ratio:.2f}",
        target=f">= {MIN_RPS_RATIO:.2f}",
        ok=ratio >= MIN_RPS_RATIO and not load.errors,
    )


def throughput(gen: LoadGenerator, workers: int, rounds: int) -> list[Row]:
    """Requests/s of the bare Starlette reference, GetTask MINIMAL and CreateTask.

    Both servers run side by side (the idle one costs nothing) and the three loads take turns
    for ``rounds`` rounds; each keeps its best round, the one least disturbed by anything else
    on the machine.
    """
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        with redis_server(work) as redis_url:
            env = _env(work, redis_url, workers)
            ref_path = f"{TASKS}/{REFERENCE_BODY['id']}"
            with (
                gunicorn_server("starlette", work, env, ref_path) as ref_port,
                gunicorn_server("tes", work, env, SERVICE_INFO) as port,
            ):
                status, body = request(port, "POST", TASKS, CREATE_BODY)
                if status != 200:
                    raise RuntimeError(f"CreateTask failed: HTTP {status}: {body}")
                get_path = f"{TASKS}/{body['id']}"
                status, task = request(port, "GET", get_path)
                if status != 200 or set(task) != {"id", "state"}:
                    raise RuntimeError(f"GetTask failed: HTTP {status}: {task}")
                plan = {
                    "bare Starlette GET (reference)": (ref_port, "GET", ref_path, None),
                    "GetTask MINIMAL": (port, "GET", get_path, None),
                    "CreateTask": (port, "POST", TASKS, CREATE_BODY),
                }
                best: dict[str, Load] = {}
                for i in range(rounds):
                    for name, (on, method, path, payload) in plan.items():
                        note(f"throughput: {name}, round {i + 1} of {rounds}")
                        load = gen.run(on, method, path, payload)
                        seen = best.get(name)
                        errors = load.errors + (seen.errors if seen else 0)
                        rps = max(load.rps, seen.rps if seen else 0.0)
                        best[name] = Load(rps=rps, errors=errors)
    reference = best["bare Starlette GET (reference)"]
    return [
        _rps_row(name, load, None if load is reference else reference)
        for name, load in best.items()
    ]


# -- ListTasks latency --------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """One ListTasks query: its filters, ANDed."""

    label: str
    name_prefix: str = ""
    state: str = ""
    tags: tuple[tuple[str, str], ...] = field(default=())

    def path(self, view: str) -> str:
        """Return the ListTasks path and query for ``view``."""
        query: dict[str, str | list[str]] = {"view": view}
        if self.name_prefix:
            query["name_prefix"] = self.name_prefix
        if self.state:
            query["state"] = self.state
        if self.tags:
            query["tag_key"] = [key for key, _ in self.tags]
            query["tag_value"] = [value for _, value in self.tags]
        return f"{TASKS}?{urllib.parse.urlencode(query, doseq=True)}"

    def count(self, specs: list[seed.Spec]) -> int:
        """Return how many seeded tasks match."""
        tags = dict(self.tags)
        return sum(seed.matches(s, self.name_prefix, self.state, tags) for s in specs)


FILTERS = [
    Filter("no filter"),
    Filter("name_prefix=align- (many)", name_prefix="align-"),
    Filter("name_prefix=hotfix- (few)", name_prefix="hotfix-"),
    Filter("state=RUNNING", state="RUNNING"),
    Filter("state=EXECUTOR_ERROR (few)", state="EXECUTOR_ERROR"),
    Filter("tag_key=project (present)", tags=(("project", ""),)),
    Filter("tag_key=urgent (present, few)", tags=(("urgent", ""),)),
    Filter("tag project=proj-3", tags=(("project", "proj-3"),)),
    Filter(
        "call- & COMPLETE & project=proj-1",
        name_prefix="call-",
        state="COMPLETE",
        tags=(("project", "proj-1"),),
    ),
    Filter(
        "call- & RUNNING & project=proj-2 (sparse)",
        name_prefix="call-",
        state="RUNNING",
        tags=(("project", "proj-2"),),
    ),
]


def _ms(lat: Latency) -> str:
    return f"{lat.median * 1000:.2f} ms (p90 {lat.p90 * 1000:.2f}, n={len(lat.samples)})"


def _latency_row(
    name: str, lat: Latency, reference: Latency, ok: bool = True, targeted: bool = True
) -> Row:
    ratio = lat.median / reference.median
    return Row(
        name,
        _ms(lat),
        reference=f"{reference.median * 1000:.2f} ms",
        ratio=f"{ratio:.1f}x",
        target=f"<= {MAX_LIST_RATIO:g}x" if targeted else "-",
        ok=(ok and ratio <= MAX_LIST_RATIO) if targeted else None,
    )


@contextmanager
def seeded_server(work: Path, workers: int, db: Path) -> Iterator[tuple[int, str]]:
    """Serve the seeded store ``db`` as `kueue-tes api`; yield (port, a COMPLETE task's path)."""
    with redis_server(work) as redis_url:
        env = _env(work, redis_url, workers) | {"KUEUE_TES_SQLITE_PATH": str(db)}
        with gunicorn_server("tes", work, env, SERVICE_INFO) as port:
            status, page = request(port, "GET", f"{TASKS}?state=COMPLETE&page_size=1")
            if status != 200 or not page.get("tasks"):
                raise RuntimeError(f"cannot find a seeded task: HTTP {status}: {page}")
            yield port, f"{TASKS}/{page['tasks'][0]['id']}"


def listing(workers: int, max_seconds: float) -> list[Row]:
    """ListTasks latency over 100,000 tasks, per filter and view, against GetTask MINIMAL.

    Each query takes turns with GetTask MINIMAL on the same connection, and its ratio is to
    those GetTask times, so both saw the same load from anything else on the machine.
    """
    specs = seed.specs()
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        work = Path(tmp)
        db = seed.seeded_db(work / "data" / "tasks.db")
        with seeded_server(work, workers, db) as (port, task):
            note("latency: GetTask")
            [get] = latency(port, task, max_seconds=max_seconds)
            basic, ref = latency(port, f"{task}?view=BASIC", task, max_seconds=max_seconds)
            rows = [
                Row("GetTask MINIMAL (alone)", _ms(get)),
                _latency_row("GetTask BASIC", basic, ref, targeted=False),
            ]
            for flt in FILTERS:
                matching = flt.count(specs)
                for view in ("MINIMAL", "BASIC"):
                    note(f"latency: ListTasks {view} {flt.label}")
                    lat, ref = latency(port, flt.path(view), task, max_seconds=max_seconds)
                    returned = len(lat.body.get("tasks", []))
                    right = returned == min(PAGE_SIZE, matching)
                    name = f"ListTasks {view:<7} {flt.label} [{matching:,}]"
                    if not right:
                        name += f" WRONG PAGE: {returned} tasks"
                    rows.append(_latency_row(name, lat, ref, ok=right))
    return rows
