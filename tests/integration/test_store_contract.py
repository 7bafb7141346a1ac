"""One contract for every TaskStore: SQLite on a real file, MongoDB (mongomock or a real server)."""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mongomock
import pytest

from app import ids, views
from app.models import State, View
from app.store import open_store
from app.store.base import (
    ALLOWED_FROM,
    TERMINAL,
    RenderedPage,
    StoreError,
    TaskFilter,
    TaskRecord,
    TaskStore,
)
from app.store.mongo import MongoStore
from app.store.sqlite import SqliteStore
from tests.conftest import make_settings

MONGO_URI = os.environ.get("KUEUE_TES_MONGO_URI")


@pytest.fixture(params=["sqlite", "mongo"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    """A fresh, empty store of each kind."""
    if request.param == "sqlite":
        sqlite_store = SqliteStore(tmp_path / "sub" / "tasks.db")
        yield sqlite_store
        sqlite_store.close()
        return
    if MONGO_URI:
        database = f"kueue_tes_test_{uuid.uuid4().hex}"
        real = MongoStore.from_uri(MONGO_URI, database)
        yield real
        real._client.drop_database(database)
        real.close()
        return
    yield MongoStore(mongomock.MongoClient(), "kueue_tes_test")


def record(
    state: State = State.QUEUED,
    owner: str = "alice",
    name: str | None = None,
    tags: dict[str, str] | None = None,
    notes: list[str] | None = None,
) -> TaskRecord:
    """A new task record with a fresh id."""
    task_id = ids.new_id()
    doc: dict[str, Any] = {"id": task_id, "state": state.value, "name": name, "tags": tags}
    doc = {k: v for k, v in doc.items() if v is not None}
    doc["executors"] = [{"image": "alpine", "command": ["echo", "hi"]}]
    return TaskRecord(id=task_id, state=state, owner=owner, doc=doc, notes=list(notes or []))


def add(store: TaskStore, **kwargs: Any) -> str:
    """Create a task and return its id."""
    rec = record(**kwargs)
    store.create(rec)
    return rec.id


def listed(store: TaskStore, flt: TaskFilter, page_size: int = 1000) -> list[str]:
    """Every id matching ``flt``, walking all pages."""
    out: list[str] = []
    before: str | None = None
    while True:
        page = store.list(flt, page_size, before=before, minimal=True)
        out += [r.id for r in page.records]
        if not page.more:
            return out
        before = page.records[-1].id


def test_create_get_round_trip(store: TaskStore) -> None:
    rec = record(name="n", tags={"a": "1"}, notes=["dropped x"])
    store.create(rec)
    got = store.get(rec.id)
    assert got is not None
    assert got.id == rec.id
    assert got.state is State.QUEUED
    assert got.owner == "alice"
    assert got.notes == ["dropped x"]
    assert got.doc == rec.doc
    assert got.doc["state"] == "QUEUED"
    assert "owner" not in got.doc and "notes" not in got.doc
    assert store.get(ids.new_id()) is None
    assert store.get(rec.id, owner="alice") is not None
    assert store.get(rec.id, owner="bob") is None
    with pytest.raises(StoreError):
        store.create(rec)


def test_list_newest_first_with_pages(store: TaskStore) -> None:
    made = [add(store) for _ in range(7)]
    page = store.list(TaskFilter(), 10)
    assert [r.id for r in page.records] == made[::-1] and not page.more
    page = store.list(TaskFilter(), 3)
    assert [r.id for r in page.records] == made[::-1][:3] and page.more
    page = store.list(TaskFilter(), 7)
    assert len(page.records) == 7 and not page.more


def test_keyset_pagination_yields_each_once(store: TaskStore) -> None:
    made = [add(store) for _ in range(23)]
    for size in (1, 4, 5, 23, 50):
        assert listed(store, TaskFilter(), size) == made[::-1]


def test_full_and_minimal_listing(store: TaskStore) -> None:
    rec = record(name="x", tags={"k": "v"})
    store.create(rec)
    [got] = store.list(TaskFilter(), 5).records
    assert got.id == rec.id and got.owner == "alice" and got.doc == rec.doc
    [got] = store.list(TaskFilter(), 5, minimal=True).records
    assert got.doc == {"id": rec.id, "state": "QUEUED"} and got.state is State.QUEUED


@pytest.fixture
def seeded(store: TaskStore) -> dict[str, str]:
    """A few tasks that the filters tell apart; maps a label to its id."""
    return {
        "plain": add(store, name="plain"),
        "pct": add(store, name="50%_done", tags={"env": "prod"}),
        "like": add(store, name="50xxdone", tags={"env": "dev"}),
        "run": add(store, name="50%_run", state=State.RUNNING, tags={"env": "prod", "team": "a"}),
        "bob": add(store, name="50%_bob", owner="bob", tags={"env": "", "team": "a"}),
        "unnamed": add(store, tags={"team": "b"}),
        "dot": add(store, name="a.b*c", state=State.COMPLETE),
    }


FILTERS: list[tuple[TaskFilter, list[str]]] = [
    (TaskFilter(), ["dot", "unnamed", "bob", "run", "like", "pct", "plain"]),
    (TaskFilter(name_prefix="50%_"), ["bob", "run", "pct"]),
    (TaskFilter(name_prefix="50"), ["bob", "run", "like", "pct"]),
    (TaskFilter(name_prefix="50%_done"), ["pct"]),
    (TaskFilter(name_prefix="50%_done!"), []),
    (TaskFilter(name_prefix="a.b*"), ["dot"]),
    (TaskFilter(name_prefix="a.c"), []),
    (TaskFilter(name_prefix="_"), []),
    (TaskFilter(state=State.RUNNING), ["run"]),
    (TaskFilter(state=State.QUEUED), ["unnamed", "bob", "like", "pct", "plain"]),
    (TaskFilter(tags={"env": ""}), ["bob", "run", "like", "pct"]),
    (TaskFilter(tags={"env": "prod"}), ["run", "pct"]),
    (TaskFilter(tags={"env": "staging"}), []),
    (TaskFilter(tags={"env": "", "team": "a"}), ["bob", "run"]),
    (TaskFilter(tags={"env": "prod", "team": "a"}), ["run"]),
    (TaskFilter(tags={"team": ""}), ["unnamed", "bob", "run"]),
    (TaskFilter(owner="bob"), ["bob"]),
    (TaskFilter(owner="alice", tags={"team": "a"}), ["run"]),
    (TaskFilter(owner="alice", name_prefix="50%"), ["run", "pct"]),
    (TaskFilter(owner="alice", state=State.QUEUED), ["unnamed", "like", "pct", "plain"]),
    (TaskFilter(name_prefix="50", state=State.QUEUED, tags={"env": ""}), ["bob", "like", "pct"]),
    (TaskFilter(owner="carol"), []),
]


@pytest.mark.parametrize(("flt", "expected"), FILTERS)
def test_filters(
    store: TaskStore, seeded: dict[str, str], flt: TaskFilter, expected: list[str]
) -> None:
    want = [seeded[label] for label in expected]
    for size in (1, 2, 100):
        assert listed(store, flt, size) == want
    full = store.list(flt, 100)
    assert [r.id for r in full.records] == want
    assert all(r.doc["id"] == r.id for r in full.records)


def test_filters_with_many_tasks_and_pagination(store: TaskStore) -> None:
    made: dict[str, list[str]] = {"rare": [], "tagged": [], "all": []}
    for i in range(300):
        tags = {"k": "v" if i % 3 == 0 else "w", "i": str(i)}
        name = "rare-1" if i % 97 == 0 else f"task-{i}"
        task_id = add(store, name=name, tags=tags, owner="alice" if i % 2 else "bob")
        made["all"].append(task_id)
        if name == "rare-1":
            made["rare"].append(task_id)
        if i % 3 == 0 and i % 2:
            made["tagged"].append(task_id)
    assert listed(store, TaskFilter(name_prefix="rare"), 2) == made["rare"][::-1]
    assert listed(store, TaskFilter(name_prefix="task-"), 7) == [
        i for i in made["all"][::-1] if i not in made["rare"]
    ]
    assert listed(store, TaskFilter(owner="alice", tags={"k": "v"}), 9) == made["tagged"][::-1]
    assert listed(store, TaskFilter(tags={"i": "150"}), 9) == [made["all"][150]]


@pytest.mark.parametrize(("start", "to"), list(itertools.product(State, State)))
def test_transition_table(store: TaskStore, start: State, to: State) -> None:
    task_id = add(store, state=start)
    moved = store.transition(task_id, to)
    assert moved == (start in ALLOWED_FROM.get(to, ()))
    got = store.get(task_id)
    assert got is not None and got.state is (to if moved else start)
    assert got.doc["state"] == got.state.value


@pytest.mark.parametrize("start", sorted(TERMINAL, key=lambda s: s.value))
def test_terminal_states_never_change(store: TaskStore, start: State) -> None:
    task_id = add(store, state=start)
    for to in State:
        assert not store.transition(task_id, to)
    got = store.get(task_id)
    assert got is not None and got.state is start


def test_transition_expect_narrows(store: TaskStore) -> None:
    task_id = add(store, state=State.RUNNING)
    assert not store.transition(task_id, State.CANCELING, expect=[State.QUEUED])
    assert store.transition(task_id, State.CANCELING, expect=[State.RUNNING, State.QUEUED])
    assert not store.transition(ids.new_id(), State.RUNNING)


def test_concurrent_transitions_have_one_winner(store: TaskStore) -> None:
    if isinstance(store, MongoStore) and not MONGO_URI:
        pytest.skip("mongomock does not serialise concurrent updates; a real server does")
    for _ in range(20):
        task_id = add(store)
        barrier = threading.Barrier(8)
        wins: list[State] = []

        def race(to: State, task_id: str = task_id, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return store.transition(task_id, to, expect=[State.QUEUED])

        targets = [State.CANCELING, State.RUNNING] * 4
        with ThreadPoolExecutor(8) as pool:
            wins = [to for to, won in zip(targets, pool.map(race, targets), strict=True) if won]
        assert len(wins) == 1
        got = store.get(task_id)
        assert got is not None and got.state is wins[0]


def test_attempts_and_notes(store: TaskStore) -> None:
    task_id = add(store, notes=["dropped backend parameter x"])
    first = {"logs": [], "outputs": [], "system_logs": ["admitted"]}
    assert store.append_attempt(task_id, first) == 0
    assert first["system_logs"] == ["admitted"]  # the caller's dict is left alone
    assert store.append_attempt(task_id, {"logs": [], "outputs": []}) == 1
    got = store.get(task_id)
    assert got is not None and got.notes == []
    logs = got.doc["logs"]
    assert logs[0]["system_logs"] == ["dropped backend parameter x", "admitted"]
    assert "system_logs" not in logs[1]
    assert store.append_attempt(task_id, {"logs": []}) == 2
    with pytest.raises(StoreError):
        store.append_attempt(ids.new_id(), {"logs": []})


@pytest.mark.parametrize(("notes", "first"), [([], None), (["a", "b"], ["a", "b"])])
def test_first_attempt_system_logs(store: TaskStore, notes: list[str], first: Any) -> None:
    task_id = add(store, notes=notes)
    assert store.append_attempt(task_id, {"logs": [], "outputs": []}) == 0
    got = store.get(task_id)
    assert got is not None and got.doc["logs"][0].get("system_logs") == first


def test_update_attempt(store: TaskStore) -> None:
    task_id = add(store)
    assert not store.update_attempt(task_id, 0, {"end_time": "t"})
    store.append_attempt(task_id, {"logs": [], "outputs": []})
    store.append_attempt(task_id, {"logs": [], "outputs": []})
    assert store.update_attempt(task_id, 1, {"end_time": "t1", "logs": [{"exit_code": 0}]})
    assert store.update_attempt(task_id, 0, {"start_time": "t0"})
    assert not store.update_attempt(task_id, 2, {"end_time": "x"})
    assert not store.update_attempt(task_id, -1, {"end_time": "x"})
    assert not store.update_attempt(ids.new_id(), 0, {"end_time": "x"})
    got = store.get(task_id)
    assert got is not None
    assert got.doc["logs"] == [
        {"logs": [], "outputs": [], "start_time": "t0"},
        {"logs": [{"exit_code": 0}], "outputs": [], "end_time": "t1"},
    ]


def test_ids_in_states_oldest_first(store: TaskStore) -> None:
    states = [State.QUEUED, State.RUNNING, State.COMPLETE, State.CANCELING, State.QUEUED]
    made = [add(store, state=s) for s in states]
    active, watched = [made[i] for i in (0, 1, 3, 4)], set(states) - {State.COMPLETE}
    assert store.ids_in_states(watched) == active
    assert store.ids_in_states(watched, limit=2) == active[:2]
    assert store.ids_in_states([State.PAUSED]) == []
    assert store.ids_in_states([]) == []


def test_close(tmp_path: Path) -> None:
    sqlite_store = SqliteStore(tmp_path / "tasks.db")
    add(sqlite_store)
    sqlite_store.close()
    with pytest.raises(StoreError):
        sqlite_store.get(ids.new_id())
    MongoStore(mongomock.MongoClient(), "db").close()


def test_sqlite_stores_on_one_file_share_writes(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    one, two = SqliteStore(path), SqliteStore(path)
    task_id = add(one)
    assert two.get(task_id) is not None
    assert two.transition(task_id, State.RUNNING)
    got = one.get(task_id)
    assert got is not None and got.state is State.RUNNING
    assert two.append_attempt(task_id, {"logs": []}) == 0
    assert one.append_attempt(task_id, {"logs": []}) == 1
    one.close()
    two.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_threads_share_one_store(tmp_path: Path) -> None:
    sqlite_store = SqliteStore(tmp_path / "tasks.db")
    task_id = add(sqlite_store)
    with ThreadPoolExecutor(4) as pool:
        indexes = list(pool.map(lambda _: sqlite_store.append_attempt(task_id, {}), range(80)))
    assert sorted(indexes) == list(range(80))
    got = sqlite_store.get(task_id)
    assert got is not None and len(got.doc["logs"]) == 80
    sqlite_store.close()


def test_open_store_picks_sqlite_by_default(tmp_path: Path) -> None:
    opened = open_store(make_settings(tmp_path))
    assert isinstance(opened, SqliteStore)
    assert (tmp_path / "data" / "tasks.db").exists()
    opened.close()


@pytest.mark.parametrize("caps", [(1, 1), (2, 3), (4, 1), (8, 2), (16, 4)])
def test_sqlite_planner_paths_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caps: tuple[int, int]
) -> None:
    # Tiny caps make every filter "dense", so the id-order scans, the density sampling and
    # the name-window fallback all run on a small store; they must list the same tasks.
    from app.store import sqlite_plan

    monkeypatch.setattr(sqlite_plan, "SORTABLE", caps[0])
    monkeypatch.setattr(sqlite_plan, "_SAMPLE", caps[1])
    sqlite_store = SqliteStore(tmp_path / "tasks.db")
    rng = random.Random(7)
    # The oldest tasks share a prefix that none of the newest have: the name window case.
    tasks = [record(name="zz-old") for _ in range(30)]
    for rec in tasks:
        sqlite_store.create(rec)
    for i in range(120):
        name = rng.choice(["a-", "ab-", "b-", "a%_"]) + str(i) if i % 5 else None
        tags = {k: rng.choice(["x", "y"]) for k in ("k1", "k2", "k3") if rng.random() < 0.5}
        state = rng.choice([State.QUEUED, State.RUNNING, State.COMPLETE])
        rec = record(state=state, owner=rng.choice(["alice", "bob"]), name=name, tags=tags)
        sqlite_store.create(rec)
        tasks.append(rec)

    def matches(rec: TaskRecord, flt: TaskFilter) -> bool:
        tags = rec.doc.get("tags") or {}
        name = rec.doc.get("name")
        return (
            (flt.owner is None or rec.owner == flt.owner)
            and (flt.state is None or rec.state is flt.state)
            and (not flt.name_prefix or (name or "").startswith(flt.name_prefix))
            and all(k in tags and (not v or tags[k] == v) for k, v in flt.tags.items())
        )

    newest_first = sorted(tasks, key=lambda r: r.id, reverse=True)
    for flt in [
        TaskFilter(name_prefix="a"),
        TaskFilter(name_prefix="a%_"),
        TaskFilter(name_prefix="zz-"),
        TaskFilter(owner="bob", name_prefix="a"),
        TaskFilter(tags={"k1": "", "k2": "x"}),
        TaskFilter(tags={"k1": "x", "k2": "", "k3": "y"}, state=State.RUNNING),
        TaskFilter(state=State.QUEUED, name_prefix="ab"),
        TaskFilter(owner="alice", state=State.COMPLETE, tags={"k3": ""}, name_prefix="b"),
    ]:
        want = [r.id for r in newest_first if matches(r, flt)]
        for size in (1, 3, 50, 500):
            assert listed(sqlite_store, flt, size) == want, (flt, size)
    sqlite_store.close()


# -- stored views: BASIC and FULL kept beside the doc, never stale ---------------------------


def rich_record(**kwargs: Any) -> TaskRecord:
    """A task with every field a view shapes: inline content, outputs, resources, tags, unicode."""
    rec = record(name="rich-é", tags={"k": "v", "empty": ""}, **kwargs)
    rec.doc.update(
        description="all fields ✓",
        inputs=[
            {"path": "/data/in.txt", "content": "hi\n", "type": "FILE"},
            {"path": "/data/ref", "url": "s3://b/ref/", "type": "DIRECTORY"},
        ],
        outputs=[{"path": "/data/out.txt", "url": "s3://b/out.txt", "type": "FILE"}],
        resources={"cpu_cores": 2, "ram_gb": 1.5, "backend_parameters": {"queue": "q"}},
        volumes=["/vol"],
        creation_time="2024-06-11T10:00:00.000000Z",
    )
    return rec


def assert_views_fresh(store: TaskStore, task_id: str) -> None:
    """Every view read from the stored views is the view rendered from the doc, byte for byte."""
    got = store.get(task_id)
    assert got is not None
    flt = TaskFilter(owner=got.owner)
    for view in View:
        want = json.dumps(views.render(got.doc, view))
        assert store.get_rendered(task_id, view) == want
        assert store.get_rendered(task_id, view, owner=got.owner) == want
        assert store.get_rendered(task_id, view, owner="someone-else") is None
        page = store.list_rendered(flt, 1000, view=view)
        assert [json.loads(text)["id"] for text in page.tasks] == listed(store, flt)
        assert page.tasks[[r.id for r in store.list(flt, 1000).records].index(task_id)] == want


def test_views_follow_every_change(store: TaskStore) -> None:
    rec = rich_record(notes=["dropped backend parameter x"])
    store.create(rec)
    task_id = rec.id
    assert_views_fresh(store, task_id)
    assert store.transition(task_id, State.INITIALIZING)
    assert_views_fresh(store, task_id)
    store.append_attempt(task_id, {"logs": [], "outputs": [], "system_logs": ["submitted"]})
    assert_views_fresh(store, task_id)  # notes moved into the attempt: FULL shows them
    running = {
        "start_time": "2024-06-11T10:00:01Z",
        "logs": [{"start_time": "s", "exit_code": 0, "stdout": "out", "stderr": "err"}],
        "metadata": {"pod": "tes-x"},
    }
    assert store.update_attempt(task_id, 0, running)
    assert store.transition(task_id, State.RUNNING)
    assert_views_fresh(store, task_id)
    outputs = [{"url": "s3://b/out.txt", "path": "/data/out.txt", "size_bytes": 12}]
    assert store.update_attempt(task_id, 0, {"outputs": outputs, "end_time": "e"})
    assert store.transition(task_id, State.QUEUED)  # evicted
    store.append_attempt(task_id, {"logs": [], "outputs": []})
    assert_views_fresh(store, task_id)
    assert store.transition(task_id, State.COMPLETE)
    assert_views_fresh(store, task_id)
    full = json.loads(store.get_rendered(task_id, View.FULL) or "")
    assert full["logs"][0]["outputs"][0]["size_bytes"] == "12"
    assert full["logs"][0]["system_logs"] == ["dropped backend parameter x", "submitted"]
    basic = json.loads(store.get_rendered(task_id, View.BASIC) or "")
    assert "system_logs" not in basic["logs"][0] and "stdout" not in basic["logs"][0]["logs"][0]
    assert "content" not in basic["inputs"][0] and full["inputs"][0]["content"] == "hi\n"


def test_rendered_pages_match_list(store: TaskStore, seeded: dict[str, str]) -> None:
    for flt, expected in FILTERS:
        for view in View:
            before: str | None = None
            seen: list[str] = []
            while True:
                page = store.list_rendered(flt, 2, before=before, view=view)
                records = store.list(flt, 2, before=before).records
                assert page.tasks == [json.dumps(views.render(r.doc, view)) for r in records]
                seen += [r.id for r in records]
                if not page.more:
                    break
                assert page.last_id == records[-1].id
                before = page.last_id
            assert seen == [seeded[label] for label in expected]
    assert store.list_rendered(TaskFilter(owner="carol"), 5) == RenderedPage([], None, False)


def test_create_many(store: TaskStore) -> None:
    batch = [record(name=f"b{i}", tags={"i": str(i)}) for i in range(5)]
    assert store.create_many(batch) == [None] * 5
    assert store.create_many([]) == []
    assert listed(store, TaskFilter(name_prefix="b")) == [r.id for r in batch][::-1]
    assert listed(store, TaskFilter(tags={"i": "3"})) == [batch[3].id]
    fresh = record(name="fresh")
    errors = store.create_many([fresh, batch[2]])
    assert errors[0] is None and isinstance(errors[1], StoreError)
    assert "already exists" in str(errors[1]) or batch[2].id in str(errors[1])
    assert store.get(fresh.id) is not None
    for rec in [*batch, fresh]:
        assert_views_fresh(store, rec.id)


#: The tasks table of the release before stored views, as such a release created it.
OLD_SQLITE_SCHEMA = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, owner TEXT NOT NULL, name TEXT,
    notes TEXT NOT NULL DEFAULT '[]', doc TEXT NOT NULL
);
CREATE TABLE tags (
    task_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (task_id, key)
) WITHOUT ROWID;
"""


def old_store(kind: str, tmp_path: Path, records: list[TaskRecord]) -> TaskStore:
    """A store of ``kind`` holding ``records`` as the release before stored views wrote them."""
    docs = [({k: v for k, v in r.doc.items() if k != "state"}, r) for r in records]
    if kind == "sqlite":
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(OLD_SQLITE_SCHEMA)
            db.executemany(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.id,
                        r.state.value,
                        r.owner,
                        d.get("name"),
                        json.dumps(r.notes),
                        json.dumps(d),
                    )
                    for d, r in docs
                ],
            )
        db.close()
        return SqliteStore(path)
    client: Any = mongomock.MongoClient()
    old_fields = {"tag_kv": [], "attempts": 0}
    client["old"]["tasks"].insert_many(
        [
            {
                "_id": r.id,
                "state": r.state.value,
                "owner": r.owner,
                "name": d.get("name"),
                "notes": r.notes,
                "doc": d,
                **old_fields,
            }
            for d, r in docs
        ]
    )
    return MongoStore(client, "old")


@pytest.mark.parametrize("kind", ["sqlite", "mongo"])
def test_older_stores_are_rendered(kind: str, tmp_path: Path) -> None:
    records = [rich_record(notes=["n"]) for _ in range(5)]
    migrated = old_store(kind, tmp_path, records)
    # Before any rendering, reads render from the doc.
    for rec in records:
        assert_views_fresh(migrated, rec.id)
    # A write renders the task it changes, also a document with no revision yet.
    assert migrated.append_attempt(records[0].id, {"logs": [], "outputs": []}) == 0
    assert_views_fresh(migrated, records[0].id)
    assert migrated.render_pending(limit=3) == 3
    assert migrated.render_pending(limit=100) == 1
    assert migrated.render_pending() == 0
    for rec in records:
        assert_views_fresh(migrated, rec.id)
    migrated.create(rich_record())
    assert migrated.render_pending() == 0
    migrated.close()
    if kind == "sqlite":  # opening it again migrates nothing twice
        again = SqliteStore(tmp_path / "old.db")
        assert again.render_pending() == 0
        assert_views_fresh(again, records[1].id)
        again.close()


def test_sqlite_write_turn_that_cannot_be_taken_is_a_store_error(tmp_path: Path) -> None:
    sqlite_store = SqliteStore(tmp_path / "tasks.db")
    (tmp_path / "tasks.db-writer").mkdir()  # the lock file cannot be opened
    rec = record()
    with pytest.raises(StoreError, match=r"cannot lock .*tasks\.db-writer for writing"):
        sqlite_store.create(rec)
    with pytest.raises(StoreError, match="must be writable"):
        sqlite_store.transition(rec.id, State.RUNNING)
    assert sqlite_store.get(rec.id) is None
    sqlite_store.close()


def test_sqlite_checkpoints_run_off_the_commit_path(tmp_path: Path) -> None:
    from app.store import sqlite_wal

    path = tmp_path / "tasks.db"
    sqlite_store = SqliteStore(path)
    reader = sqlite3.connect(path)  # held open: no checkpoint at the last close
    # Commits checkpoint only past the backstop, far above what this test writes...
    assert sqlite_store._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == (
        sqlite_wal.BACKSTOP_PAGES
    )
    before = path.stat().st_size
    for _ in range(sqlite_wal.EVERY):  # ...and the 200th write asks the thread for one
        add(sqlite_store)
    deadline = time.monotonic() + 30
    while path.stat().st_size == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > before  # pages copied from the WAL into the file
    sqlite_store.close()
    reader.close()


# -- queues: each task's LocalQueue, counts per (queue, state), the queues at a glance -----------


def test_queue_comes_from_the_task_or_the_default(tmp_path: Path) -> None:
    stores: list[TaskStore] = [
        SqliteStore(tmp_path / "tasks.db", default_queue="tes"),
        MongoStore(mongomock.MongoClient(), "queues", default_queue="tes"),
    ]
    for each in stores:
        plain = add(each)
        named = record()
        named.doc["resources"] = {"backend_parameters": {"queue": "team-a"}}
        each.create(named)
        explicit = record()
        explicit.queue = "chosen"
        each.create(explicit)
        got = {i: each.get(i) for i in (plain, named.id, explicit.id)}
        assert {i: r.queue for i, r in got.items() if r} == {
            plain: "tes",
            named.id: "team-a",
            explicit.id: "chosen",
        }
        # The queue is ours: it never enters the TES document.
        assert all("queue" not in r.doc for r in got.values() if r)
        each.close()


def test_counts_follow_creates_and_transitions(store: TaskStore) -> None:
    assert store.counts() == {}
    one, two = add(store), add(store)
    named = record()
    named.doc["resources"] = {"backend_parameters": {"queue": "gpu"}}
    store.create(named)
    assert store.counts() == {("", State.QUEUED): 2, ("gpu", State.QUEUED): 1}
    assert store.transition(one, State.RUNNING)
    assert store.transition(two, State.CANCELING)
    assert not store.transition(two, State.RUNNING)  # refused: nothing moves
    assert store.transition(two, State.CANCELED)
    store.append_attempt(one, {"logs": []})  # an update of the doc alone counts nothing
    assert store.counts() == {
        ("", State.RUNNING): 1,
        ("", State.CANCELED): 1,
        ("gpu", State.QUEUED): 1,
    }


def test_since_is_when_the_task_entered_its_state(store: TaskStore) -> None:
    before = time.time()
    task_id = add(store)
    created = store.get(task_id)
    assert created is not None and created.since is not None
    assert before <= created.since <= time.time()
    time.sleep(0.01)
    assert store.transition(task_id, State.RUNNING)
    moved = store.get(task_id)
    assert moved is not None and moved.since is not None and moved.since > created.since
    [listed_record] = store.list(TaskFilter(), 5).records
    assert listed_record.since == moved.since


def test_queues_at_a_glance(store: TaskStore) -> None:
    waiting = [add(store) for _ in range(3)]
    done_early = add(store)
    assert store.transition(done_early, State.RUNNING)
    assert store.transition(done_early, State.COMPLETE)
    cutoff = time.time()
    time.sleep(0.01)
    running, failed = add(store), add(store)
    assert store.transition(running, State.RUNNING)
    assert store.transition(failed, State.RUNNING) and store.transition(failed, State.SYSTEM_ERROR)
    # The first task to wait is the one that has waited longest; one started later stays newer.
    assert store.transition(waiting[0], State.INITIALIZING)
    assert store.transition(waiting[0], State.QUEUED)  # evicted: waits again from now
    [stats] = store.queues(finished_after=cutoff)
    assert stats.queue == ""
    assert stats.states == {
        State.QUEUED: 3,
        State.RUNNING: 1,
        State.COMPLETE: 1,
        State.SYSTEM_ERROR: 1,
    }
    assert stats.finished == 1  # the SYSTEM_ERROR after the cutoff, not the COMPLETE before
    assert stats.oldest is not None and stats.oldest.id == waiting[1]
    assert stats.oldest.doc["executors"]  # a full record, to read its reason from
    assert store.queues(finished_after=0)[0].finished == 2


def test_sqlite_file_of_an_earlier_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with sqlite3.connect(path) as db:  # the schema before queues were kept
        db.executescript(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, state TEXT NOT NULL, owner TEXT NOT NULL,"
            " name TEXT, notes TEXT NOT NULL DEFAULT '[]', doc TEXT NOT NULL);"
        )
        rows = [
            ("01a", "COMPLETE", "{}"),
            ("01b", "QUEUED", '{"resources": {"backend_parameters": {"queue": "team-a"}}}'),
            ("01c", "QUEUED", '{"creation_time": "2024-05-01T10:00:00.500000Z"}'),
        ]
        db.executemany("INSERT INTO tasks (id, state, owner, doc) VALUES (?, ?, 'alice', ?)", rows)
    for _ in range(2):  # opening again changes nothing
        old = SqliteStore(path, default_queue="tes")
        assert old.counts() == {
            ("tes", State.COMPLETE): 1,
            ("team-a", State.QUEUED): 1,
            ("tes", State.QUEUED): 1,
        }
        got = old.get("01c")
        assert (
            got is not None
            and got.queue == "tes"
            and got.since == pytest.approx(1714557600.5, abs=0.01)
        )
        old.close()
    old = SqliteStore(path, default_queue="tes")
    task_id = add(old)
    assert old.transition("01a", State.COMPLETE) is False
    assert old.counts()[("tes", State.QUEUED)] == 2 and old.get(task_id) is not None
    old.close()


def test_mongo_tasks_of_an_earlier_version_are_migrated() -> None:
    client: Any = mongomock.MongoClient()
    client["old"]["tasks"].insert_many(
        [
            {"_id": "01a", "state": "COMPLETE", "owner": "a", "notes": [], "doc": {}},
            {
                "_id": "01b",
                "state": "QUEUED",
                "owner": "a",
                "notes": [],
                "doc": {
                    "resources": {"backend_parameters": {"queue": "team-a"}},
                    "creation_time": "2024-05-01T10:00:00.500000Z",
                },
            },
        ]
    )
    migrated = MongoStore(client, "old", default_queue="tes")
    assert migrated.counts() == {("tes", State.COMPLETE): 1, ("team-a", State.QUEUED): 1}
    got = migrated.get("01b")
    assert (
        got is not None
        and got.queue == "team-a"
        and got.since == pytest.approx(1714557600.5, abs=0.01)
    )
