"""The front door's fast paths against the spec-driven routes, which stay the reference.

Two apps share one store and one Redis: one as deployed, one with the fast paths turned off,
so that every request reaches Connexion's route. Every CreateTask body, valid or not, must get
the same status, content type and body from both (the ids of created tasks aside, and then
the stored tasks must be the same); GetTask and ListTasks must answer the same after every
kind of change a task goes through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from starlette.testclient import TestClient

from app import queue
from app.main import create_app
from app.models import State
from app.settings import Settings
from app.store.base import TaskFilter, TaskStore
from tests.conftest import make_settings
from tests.integration.test_api import BAD_TASKS, open_store, services_of, task_body

TASKS = "/ga4gh/tes/v1/tasks"
JSON = {"content-type": "application/json"}


@dataclass
class Both:
    """The same store and Redis behind the fast paths and behind the spec-driven routes."""

    fast: TestClient
    spec: TestClient
    store: TaskStore
    settings: Settings

    def flush(self) -> None:
        """Wait until both apps have enqueued every task they stored."""
        for client in (self.fast, self.spec):
            assert services_of(client.app).intake.flush()


@pytest.fixture(params=["sqlite", "mongo"])
def both(request: pytest.FixtureRequest, tmp_path: Path, redis_db: str) -> Iterator[Both]:
    """Both routes, on each store."""
    settings = make_settings(
        tmp_path, redis_url=redis_db, max_body_bytes=20_000, max_content_bytes=1_000
    )
    store = open_store(str(request.param), tmp_path)
    apps = [
        create_app(settings, store, queue.TaskQueue(settings, queue.connect(settings)))
        for _ in range(2)
    ]
    services_of(apps[1]).fast_paths = False
    with TestClient(apps[0]) as fast, TestClient(apps[1]) as spec:
        yield Both(fast, spec, store, settings)
    store.close()


def ordered(text: str) -> Any:
    """Parse JSON keeping key order visible: objects become lists of pairs."""
    return json.loads(text, object_pairs_hook=list)


def same(fast: Any, spec: Any) -> None:
    """Assert two answers alike: status, content type and JSON body with its key order."""
    assert fast.status_code == spec.status_code, (fast.text, spec.text)
    assert fast.headers["content-type"] == spec.headers["content-type"]
    assert ordered(fast.text) == ordered(spec.text), (fast.text, spec.text)


# -- CreateTask -------------------------------------------------------------------------------


def _valid_bodies() -> list[tuple[str, dict[str, Any]]]:
    lenient = task_body(
        inputs=[
            {"path": "/data/a", "url": "gopher://example/b"},
            {"path": "/data/c", "content": ""},
        ],
        tags={"keep": "1", "drop": None},
        resources={"cpu_cores": 1.2, "backend_parameters": {"queue": "team-a", "x": None}},
        id="client-chosen",
        state="COMPLETE",
        logs=[],
        creation_time="yesterday",
    )
    rich = task_body(
        description="é ✓",
        outputs=[{"path": "/data/*.txt", "path_prefix": "/data/", "url": "s3://b/"}],
        resources={"cpu_cores": 2, "ram_gb": 1.5, "disk_gb": 3, "preemptible": True},
        volumes=["/vol"],
        tags={"project": "p", "empty": ""},
        executors=[
            {"image": "alpine", "command": ["sh", "-c", "echo hi"], "env": {"A": "1"}},
            {"image": "busybox", "command": ["true"], "workdir": "/data", "ignore_error": True},
        ],
    )
    return [
        ("small", task_body()),
        ("minimal", {"executors": [{"image": "alpine", "command": ["true"]}]}),
        ("lenient", lenient),
        ("rich", rich),
        ("dropped backend parameter", task_body(resources={"backend_parameters": {"zz": "1"}})),
    ]


@pytest.mark.parametrize(("label", "body"), _valid_bodies(), ids=[v[0] for v in _valid_bodies()])
def test_valid_tasks_are_stored_alike(both: Both, label: str, body: dict[str, Any]) -> None:
    fast = both.fast.post(TASKS, json=body)
    spec = both.spec.post(TASKS, json=body)
    assert fast.status_code == spec.status_code == 200, (fast.text, spec.text)
    assert fast.headers["content-type"] == spec.headers["content-type"]
    ids = [fast.json()["id"], spec.json()["id"]]
    assert [list(answer.json()) for answer in (fast, spec)] == [["id"], ["id"]]
    records = [both.store.get(task_id) for task_id in ids]
    assert records[0] is not None and records[1] is not None
    docs = [{**r.doc, "id": "", "creation_time": ""} for r in records]
    assert docs[0] == docs[1] and list(docs[0]) == list(docs[1])
    assert records[0].notes == records[1].notes and records[0].owner == records[1].owner
    assert records[0].state is records[1].state is State.QUEUED
    both.flush()
    connection = redis.Redis.from_url(str(both.settings.redis_url))
    jobs = Queue(both.settings.rq_queue, connection=connection).get_jobs()
    assert sorted(task_id for job in jobs for task_id in job.args) == sorted(ids)


def _invalid_requests() -> list[tuple[str, bytes, dict[str, str]]]:
    cases = []
    for change, field in BAD_TASKS:
        body = task_body()
        body.update(change)
        cases.append((f"bad {field}", json.dumps(body).encode(), JSON))
    big_content = task_body(inputs=[{"path": "/data/x", "content": "x" * 2_000}])
    strict = task_body(
        resources={"backend_parameters": {"zz": "b"}, "backend_parameters_strict": True}
    )
    valid = json.dumps(task_body()).encode()
    cases += [
        ("content over its limit", json.dumps(big_content).encode(), JSON),
        ("strict backend parameters", json.dumps(strict).encode(), JSON),
        ("body over its limit", json.dumps(task_body(name="x" * 30_000)).encode(), JSON),
        ("not JSON", b"{nope", JSON),
        ("not UTF-8", b'{"name": "\xe9"}', JSON),
        ("NaN", b'{"executors": [{"image": "a", "command": ["x"]}], "name": NaN}', JSON),
        ("a list", b"[1]", JSON),
        ("a string", b'"task"', JSON),
        ("null", b"null", JSON),
        ("empty", b"", JSON),
        ("text/plain", valid, {"content-type": "text/plain"}),
        ("no content type", valid, {}),
        ("another JSON type", valid, {"content-type": "application/vnd.x+json"}),
    ]
    return cases


@pytest.mark.parametrize(
    ("label", "content", "headers"), _invalid_requests(), ids=[c[0] for c in _invalid_requests()]
)
def test_invalid_requests_are_refused_alike(
    both: Both, label: str, content: bytes, headers: dict[str, str]
) -> None:
    fast = both.fast.post(TASKS, content=content, headers=headers)
    spec = both.spec.post(TASKS, content=content, headers=headers)
    same(fast, spec)
    assert 400 <= fast.status_code < 500
    if "bad " in label:
        assert fast.json()["field"] == label.removeprefix("bad ")
    assert both.store.list(TaskFilter(), 10).records == []  # nothing stored


def test_json_with_a_charset_or_in_utf16_is_accepted_alike(both: Both) -> None:
    body = json.dumps(task_body())
    for content, content_type in [
        (body.encode(), "application/json; charset=utf-8"),
        (body.encode("utf-16"), "application/json"),
    ]:
        headers = {"content-type": content_type}
        fast = both.fast.post(TASKS, content=content, headers=headers)
        spec = both.spec.post(TASKS, content=content, headers=headers)
        assert fast.status_code == spec.status_code == 200, (fast.text, spec.text)
    # Connexion matches the type as spelt (its answer is the reference, odd as it is).
    headers = {"content-type": "Application/JSON"}
    same(*(c.post(TASKS, content=body.encode(), headers=headers) for c in (both.fast, both.spec)))


def test_a_principal_without_a_route_is_403_alike(tmp_path: Path, redis_db: str) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("default: deny\nroutes: [{principals: [someone-else], queue: q}]\n")
    settings = make_settings(tmp_path, redis_url=redis_db, routes_file=routes)
    store = open_store("sqlite", tmp_path)
    apps = [create_app(settings, store) for _ in range(2)]
    services_of(apps[1]).fast_paths = False
    with TestClient(apps[0]) as fast, TestClient(apps[1]) as spec:
        answers = [client.post(TASKS, json=task_body()) for client in (fast, spec)]
    same(*answers)
    assert answers[0].status_code == 403 and "no queue route" in answers[0].json()["detail"]
    store.close()


# -- GetTask and ListTasks after every kind of change ----------------------------------------


def _reads(task_ids: list[str]) -> list[str]:
    paths = [f"{TASKS}/{i}{v}" for i in task_ids for v in ("", "?view=BASIC", "?view=FULL")]
    paths += [f"{TASKS}/{task_ids[0]}?view=MINIMAL", f"{TASKS}/{task_ids[0]}?view=ALL"]
    paths += [f"{TASKS}/01hzzzzzzzzzzzzzzzzzzzzzzz", f"{TASKS}/nope?view=FULL"]
    for view in ("", "view=MINIMAL&", "view=BASIC&", "view=FULL&"):
        paths += [
            f"{TASKS}?{view}",
            f"{TASKS}?{view}page_size=2",
            f"{TASKS}?{view}name_prefix=hel",
            f"{TASKS}?{view}state=RUNNING",
            f"{TASKS}?{view}state=UNKNOWN",
            f"{TASKS}?{view}tag_key=project&tag_value=p",
            f"{TASKS}?{view}tag_key=project&tag_key=empty&tag_value=p",
        ]
    paths += [
        f"{TASKS}?page_size=0",
        f"{TASKS}?page_size=x",
        f"{TASKS}?page_size=99999999999",
        f"{TASKS}?state=LOST",
        f"{TASKS}?page_token=bogus",
        f"{TASKS}?tag_value=v",
        f"{TASKS}?view=ALL",
    ]
    return paths


def _read_alike(both: Both, task_ids: list[str]) -> None:
    for path in _reads(task_ids):
        same(both.fast.get(path), both.spec.get(path))
    for view in ("MINIMAL", "BASIC", "FULL"):  # every page of a paged listing
        token, pages = "", 0
        while True:
            path = f"{TASKS}?view={view}&page_size=2" + (f"&page_token={token}" if token else "")
            fast, spec = both.fast.get(path), both.spec.get(path)
            same(fast, spec)
            pages += 1
            token = fast.json().get("next_page_token", "")
            if not token:
                break
        assert pages == (len(task_ids) + 1) // 2


def test_reads_answer_alike_after_every_change(both: Both) -> None:
    rich = dict(_valid_bodies())["rich"]
    ids = [both.fast.post(TASKS, json=body).json()["id"] for body in (task_body(), rich)]
    ids.append(both.spec.post(TASKS, json=task_body(name="other")).json()["id"])
    dropped = task_body(resources={"backend_parameters": {"zz": "1"}})
    ids.append(both.fast.post(TASKS, json=dropped).json()["id"])
    _read_alike(both, ids)
    store, task_id = both.store, ids[1]
    store.transition(task_id, State.INITIALIZING)
    store.append_attempt(task_id, {"logs": [], "outputs": [], "system_logs": ["submitted"]})
    store.append_attempt(ids[3], {"logs": [], "outputs": []})  # its notes move into the attempt
    _read_alike(both, ids)
    running = {"start_time": "s", "logs": [{"exit_code": 0, "stdout": "o", "stderr": "e"}]}
    store.update_attempt(task_id, 0, running)
    store.transition(task_id, State.RUNNING)
    _read_alike(both, ids)
    outputs = [{"url": "s3://b/x.txt", "path": "/data/x.txt", "size_bytes": 3}]
    store.update_attempt(task_id, 0, {"outputs": outputs, "end_time": "e"})
    store.transition(task_id, State.COMPLETE)
    assert both.fast.post(f"{TASKS}/{ids[0]}:cancel").status_code == 200
    _read_alike(both, ids)
    full = both.fast.get(f"{TASKS}/{task_id}?view=FULL").json()
    assert full["logs"][0]["outputs"][0]["size_bytes"] == "3" and full["state"] == "COMPLETE"
