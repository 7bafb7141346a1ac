"""A deterministic store of 100,000 tasks for the ListTasks benchmark, cached between runs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app import ids, views
from app.models import State, Task, TaskIn
from app.store import sqlite as sqlite_store
from app.store.base import TaskRecord
from tests.benchmarks.harness import note

#: Bump to throw away cached stores; they are also keyed by the source of the store and of
#: this module, so a schema change never meets a stale file.
SEED_VERSION = "1"
TASKS = 100_000
OWNER = "anonymous"
_START_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
_RARE = 10  # tasks with the rare name prefix, and (others) with the rare tag


@dataclass(frozen=True)
class Spec:
    """What distinguishes one seeded task: its name, state and tags."""

    n: int
    name: str
    state: State
    tags: dict[str, str]


def specs(count: int = TASKS) -> list[Spec]:
    """Return the seeded tasks' specs, oldest first; the same on every call."""
    rng = random.Random(14)
    rare_names = set(range(count // (2 * _RARE), count, count // _RARE))
    rare_tags = set(range(count // (3 * _RARE), count, count // _RARE))
    out = []
    for n in range(count):
        draw = rng.random()
        state = (
            State.COMPLETE if draw < 0.89
            else State.QUEUED if draw < 0.94
            else State.RUNNING if draw < 0.99
            else State.EXECUTOR_ERROR if draw < 0.995
            else State.CANCELED
        )  # fmt: skip
        if n in rare_names:
            name = f"hotfix-{n}"
        else:
            name = f"align-{n}" if rng.random() < 0.6 else f"call-{n}"
        tags = {"project": f"proj-{rng.randrange(5)}", "sample": f"s{n % 5000:05d}"}
        tags["batch"] = f"b{n // 1000:03d}"
        if n in rare_tags:
            tags["urgent"] = "yes"
        out.append(Spec(n=n, name=name, state=state, tags=tags))
    return out


def matches(spec: Spec, name_prefix: str = "", state: str = "", tags: Any = None) -> bool:
    """Tell whether ListTasks with these filters returns the task (tags: key -> value or "")."""
    if name_prefix and not spec.name.startswith(name_prefix):
        return False
    if state and spec.state.value != state:
        return False
    return all(
        key in spec.tags and (not value or spec.tags[key] == value)
        for key, value in (tags or {}).items()
    )


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _logs(spec: Spec, ms: int) -> list[dict[str, Any]]:
    """Return one attempt, as the worker would have recorded it by now."""
    if spec.state in (State.QUEUED, State.CANCELED):
        return []
    attempt: dict[str, Any] = {
        "start_time": _rfc3339(ms + 2_000),
        "system_logs": ["admitted by Kueue to local queue default", "pod scheduled"],
        "logs": [{"start_time": _rfc3339(ms + 3_000), "exit_code": 0}],
        "outputs": [],
    }
    if spec.state is State.RUNNING:
        return [attempt]
    code = 0 if spec.state is State.COMPLETE else 1
    attempt["logs"][0].update(
        end_time=_rfc3339(ms + 60_000), exit_code=code, stdout="done\n", stderr=""
    )
    attempt["end_time"] = _rfc3339(ms + 61_000)
    attempt["outputs"] = [
        {"url": f"s3://bench/out/{spec.n}/result.txt", "path": "/data/out/result.txt",
         "size_bytes": "1234"}
    ]  # fmt: skip
    return [attempt]


def record(spec: Spec) -> TaskRecord:
    """Return the stored form of one spec, shaped as CreateTask and the worker store it."""
    ms = _START_MS + spec.n * 1000
    body = {
        "name": spec.name,
        "description": "benchmark task",
        "inputs": [{"url": "s3://bench/ref/genome.fa", "path": "/data/genome.fa"}],
        "outputs": [{"url": f"s3://bench/out/{spec.n}/", "path": "/data/out", "type": "DIRECTORY"}],
        "resources": {"cpu_cores": 2, "ram_gb": 4},
        "executors": [{"image": "alpine:3.20", "command": ["sh", "-c", "echo done > /data/out/x"]}],
        "tags": spec.tags,
    }
    task_id = ids.new_id(now_ms=ms)
    doc = TaskIn.model_validate(body).model_dump(mode="json", exclude_none=True)
    doc.update(id=task_id, state=spec.state.value, creation_time=_rfc3339(ms))
    logs = _logs(spec, ms)
    if logs:
        doc["logs"] = logs
    return TaskRecord(id=task_id, state=spec.state, owner=OWNER, doc=doc)


def _key() -> str:
    digest = hashlib.sha256()
    # The store, what it stores (the views) and this seeder.
    for module in (sqlite_store.__file__, views.__file__, __file__):
        digest.update(Path(module).read_bytes())
    return f"v{SEED_VERSION}-{TASKS}-{digest.hexdigest()[:12]}"


def _store(store: sqlite_store.SqliteStore, group: list[TaskRecord]) -> None:
    for error in store.create_many(group):
        if error is not None:
            raise error


def _build(path: Path) -> None:
    started = time.monotonic()
    store = sqlite_store.SqliteStore(path)
    try:
        group: list[TaskRecord] = []
        for i, spec in enumerate(specs()):
            rec = record(spec)
            if i == 0:
                Task.model_validate(rec.doc)  # the views must be able to render it
            group.append(rec)
            if len(group) == 500:  # stored as CreateTask stores a group (create_many)
                _store(store, group)
                group = []
            if (i + 1) % 25_000 == 0:
                note(f"seeded {i + 1:,} tasks in {time.monotonic() - started:.0f} s")
        _store(store, group)
    finally:
        store.close()
    # One self-contained file to copy (no -wal beside it); no ANALYZE, as in production.
    db = sqlite3.connect(path)
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # the file alone, without its WAL, would not hold every task
            raise RuntimeError(f"cannot checkpoint the seeded store {path}")
    finally:
        db.close()


def seeded_db(dest: Path) -> Path:
    """Copy the seeded store to ``dest`` (a SQLite file path), seeding it on first use."""
    cache = Path(tempfile.gettempdir()) / "kueue-tes-bench" / _key()
    cached = cache / "tasks.db"
    if cached.exists():
        note(f"using the seeded store cached at {cached}")
    else:
        note(f"seeding {TASKS:,} tasks through SqliteStore.create (cached for later runs)")
        building = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        try:
            _build(building / "tasks.db")
            with contextlib.suppress(OSError):  # another run cached it first
                building.rename(cache)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        for stale in cache.parent.glob(f"v*-{TASKS}-*"):  # stores of older code: 200 MB each
            if stale != cache and ".tmp-" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    return dest
