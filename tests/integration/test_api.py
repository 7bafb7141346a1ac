"""The TES API through HTTP, against both stores, with a real redis-server as the queue."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock
import pytest
import redis
from rq import Queue
from starlette.testclient import TestClient

from app import queue, services
from app.main import create_app
from app.settings import Settings
from app.store.base import TaskStore
from app.store.mongo import MongoStore
from app.store.sqlite import SqliteStore
from tests import spec
from tests.conftest import free_port, make_settings

BASES = ["/ga4gh/tes/v1", "/v1"]


def task_body(**extra: Any) -> dict[str, Any]:
    """A small valid task."""
    body: dict[str, Any] = {
        "name": "hello",
        "inputs": [{"path": "/data/in.txt", "content": "hi\n"}],
        "outputs": [{"path": "/data/out.txt", "url": "s3://bucket/out.txt"}],
        "executors": [{"image": "alpine", "command": ["cat", "/data/in.txt"]}],
    }
    body.update(extra)
    return body


class Api:
    """A test client bound to one base path, with the settings and store behind it."""

    def __init__(self, client: TestClient, settings: Settings, store: TaskStore, base: str):
        self.client, self.settings, self.store, self.base = client, settings, store, base

    def create(self, body: dict[str, Any] | None = None, **extra: Any) -> str:
        """Create a task and return its id."""
        response = self.client.post(f"{self.base}/tasks", json=body or task_body(**extra))
        assert response.status_code == 200, response.text
        spec.check("tesCreateTaskResponse", response.json())
        # Its RQ job follows the answer (app.intake): wait for it, as the tests look at Redis.
        assert services_of(self.client.app).intake.flush()
        return str(response.json()["id"])

    def get(self, task_id: str, view: str | None = None) -> dict[str, Any]:
        """GetTask, checked against the spec."""
        params = {"view": view} if view else {}
        response = self.client.get(f"{self.base}/tasks/{task_id}", params=params)
        assert response.status_code == 200, response.text
        spec.check("tesTask", response.json(), minimal=view in (None, "MINIMAL"))
        return dict(response.json())

    def list(self, **params: Any) -> dict[str, Any]:
        """ListTasks, checked against the spec."""
        response = self.client.get(f"{self.base}/tasks", params=params)
        assert response.status_code == 200, response.text
        minimal = params.get("view", "MINIMAL") == "MINIMAL"
        spec.check("tesListTasksResponse", response.json(), minimal=minimal)
        return dict(response.json())


def services_of(app: Any) -> services.Services:
    """The Services behind an app made by create_app."""
    found: services.Services = app.app.extensions[services.EXTENSION]
    return found


def open_store(kind: str, tmp_path: Path) -> TaskStore:
    """A fresh store of ``kind``."""
    if kind == "sqlite":
        return SqliteStore(tmp_path / "tasks.db")
    return MongoStore(mongomock.MongoClient(), "kueue_tes_test")


@pytest.fixture(params=["sqlite", "mongo"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Both store implementations."""
    return str(request.param)


@pytest.fixture(params=BASES)
def api(
    request: pytest.FixtureRequest, store_kind: str, tmp_path: Path, redis_db: str
) -> Iterator[Api]:
    """The app on a real redis-server, per store and base path."""
    settings = make_settings(tmp_path, redis_url=redis_db)
    store = open_store(store_kind, tmp_path)
    app = create_app(settings, store, queue.TaskQueue(settings, queue.connect(settings)))
    with TestClient(app) as client:
        yield Api(client, settings, store, str(request.param))
    store.close()


def problem(response: Any, field: str | None = None, status: int = 400) -> dict[str, Any]:
    """Assert a problem+json answer naming ``field``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = dict(response.json())
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert field in body["detail"], body
    return body


# -- service-info --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/ga4gh/tes/v1/service-info", "/v1/service-info", "/v1/tasks/service-info"]
)
def test_service_info_on_every_path(api: Api, path: str) -> None:
    """service-info answers on both prefixes and on py-tes 0.4's legacy path."""
    response = api.client.get(path)
    assert response.status_code == 200, response.text
    body = response.json()
    spec.check("tesServiceInfo", body)
    assert body["type"] == {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}
    for field in ("id", "name", "type", "organization", "version"):
        assert body[field]
    assert body["tesResources_backend_parameters"] == api.settings.backend_parameters
    assert body["storage"] == []


def test_service_info_lists_configured_storage(tmp_path: Path, redis_db: str) -> None:
    """`storage` and the honoured backend parameters come from settings."""
    settings = make_settings(
        tmp_path,
        redis_url=redis_db,
        storage=["s3://bucket/", "file:///shared/"],
        backend_parameters=["queue"],
    )
    app = create_app(settings, SqliteStore(tmp_path / "t.db"))
    with TestClient(app) as client:
        body = client.get("/ga4gh/tes/v1/service-info").json()
    assert body["storage"] == ["s3://bucket/", "file:///shared/"]
    assert body["tesResources_backend_parameters"] == ["queue"]


# -- create and views ----------------------------------------------------------------------


def test_views(api: Api) -> None:
    """MINIMAL (the default), BASIC and FULL carry exactly what the spec says."""
    task_id = api.create(tags={"project": "x"}, resources={"cpu_cores": 2, "ram_gb": 1.5})
    assert api.get(task_id) == {"id": task_id, "state": "QUEUED"}
    assert api.get(task_id, "MINIMAL") == {"id": task_id, "state": "QUEUED"}
    basic = api.get(task_id, "BASIC")
    full = api.get(task_id, "FULL")
    assert "content" not in basic["inputs"][0]
    assert full["inputs"][0]["content"] == "hi\n"
    assert "logs" not in basic and "logs" not in full  # no attempt yet: omitted, not []
    for body in (basic, full):
        assert body["id"] == task_id and body["state"] == "QUEUED"
        assert body["name"] == "hello" and body["tags"] == {"project": "x"}
        assert body["resources"] == {"cpu_cores": 2, "ram_gb": 1.5}
        assert body["executors"] == [{"image": "alpine", "command": ["cat", "/data/in.txt"]}]
        assert body["creation_time"].endswith("Z")


def test_views_of_logs(api: Api) -> None:
    """BASIC drops system_logs and executor stdout/stderr from logs; FULL keeps them."""
    task_id = api.create()
    api.store.append_attempt(
        task_id,
        {
            "logs": [{"exit_code": 0, "stdout": "out", "stderr": "err", "start_time": "t"}],
            "outputs": [{"url": "s3://b/o", "path": "/data/out.txt", "size_bytes": 12}],
            "system_logs": ["admitted"],
            "start_time": "2026-01-01T00:00:00Z",
        },
    )
    full = api.get(task_id, "FULL")["logs"][0]
    basic = api.get(task_id, "BASIC")["logs"][0]
    assert full["system_logs"] == ["admitted"] and "system_logs" not in basic
    assert full["logs"][0]["stdout"] == "out" and "stdout" not in basic["logs"][0]
    assert full["outputs"][0]["size_bytes"] == "12"  # int64 travels as a string
    assert basic["logs"][0] == {"exit_code": 0, "start_time": "t"}


def test_unknown_id_is_404(api: Api) -> None:
    """Unknown ids answer 404 with problem+json, for get and cancel."""
    problem(api.client.get(f"{api.base}/tasks/nosuchtask"), "nosuchtask", 404)
    problem(api.client.post(f"{api.base}/tasks/nosuchtask:cancel"), "nosuchtask", 404)


# -- leniency ------------------------------------------------------------------------------


def test_lenient_inputs_are_accepted(api: Api) -> None:
    """Unreachable URLs, unknown schemes, missing type, null tags, fractional cores pass."""
    body = task_body(
        inputs=[
            {"path": "/data/a", "url": "http://unreachable.invalid/a"},
            {"path": "/data/b", "url": "gopher://example/b"},
        ],
        tags={"keep": "1", "drop": None},
        resources={"cpu_cores": 1.2, "backend_parameters": {"queue": "team-a", "x": None}},
        id="client-chosen",
        state="COMPLETE",
        logs=[],
        creation_time="yesterday",
    )
    task_id = api.create(body)
    full = api.get(task_id, "FULL")
    assert task_id != "client-chosen" and full["state"] == "QUEUED"
    assert full["inputs"][0]["type"] == "FILE"
    assert full["tags"] == {"keep": "1"}
    assert full["resources"]["cpu_cores"] == 2
    assert full["resources"]["backend_parameters"] == {"queue": "team-a"}
    assert full["creation_time"] != "yesterday" and "logs" not in full


def test_spec_example_shapes_are_accepted(api: Api) -> None:
    """Content beside a url (content wins when not empty), empty content, empty path_prefix."""
    body = task_body(
        inputs=[
            {"path": "/data/a", "url": "s3://b/a", "content": ""},
            {"path": "/data/b", "url": "s3://b/b", "content": "wins"},
            {"path": "/data/c", "content": ""},
        ],
        outputs=[{"path": "/data/out", "url": "s3://b/o", "path_prefix": ""}],
    )
    full = api.get(api.create(body), "FULL")
    assert full["inputs"][1]["content"] == "wins"
    assert full["outputs"][0]["path_prefix"] == ""


def test_unknown_backend_parameters_dropped_with_a_log(api: Api) -> None:
    """Unknown keys are dropped, and the first attempt's system_logs say so."""
    task_id = api.create(resources={"backend_parameters": {"queue": "a", "flavour": "b"}})
    full = api.get(task_id, "FULL")
    assert full["resources"]["backend_parameters"] == {"queue": "a"}
    api.store.append_attempt(task_id, {"logs": [], "outputs": []})
    logs = api.get(task_id, "FULL")["logs"][0]["system_logs"]
    assert any("'flavour'" in line and "ignored" in line for line in logs)


def test_unknown_backend_parameters_strict_is_400(api: Api) -> None:
    """backend_parameters_strict turns an unknown key into a 400 naming it."""
    body = task_body(
        resources={"backend_parameters": {"flavour": "b"}, "backend_parameters_strict": True}
    )
    problem(api.client.post(f"{api.base}/tasks", json=body), "resources.backend_parameters.flavour")


# -- strictness ----------------------------------------------------------------------------


#: Bodies (changes to a small valid task) that are 400, and the field each 400 names.
BAD_TASKS: list[tuple[dict[str, Any], str]] = [
    ({"executors": []}, "executors"),
    ({"executors": None}, "executors"),
    ({"executors": [{"image": "alpine"}]}, "executors[0].command"),
    ({"executors": [{"image": "alpine", "command": "echo hi"}]}, "executors[0].command"),
    ({"executors": [{"image": 3, "command": ["true"]}]}, "executors[0].image"),
    (
        {"executors": [{"image": "a", "command": ["true"], "workdir": "rel"}]},
        "executors[0].workdir",
    ),
    (
        {"executors": [{"image": "a", "command": ["true"], "env": {"A=B": "1"}}]},
        "executors[0].env",
    ),
    ({"inputs": [{"path": "data/x", "content": "x"}]}, "inputs[0].path"),
    ({"inputs": [{"path": "/proc/x", "content": "x"}]}, "inputs[0].path"),
    ({"inputs": [{"path": "/tes", "content": "x"}]}, "inputs[0].path"),
    ({"inputs": [{"path": "/data/../dev/x", "content": "x"}]}, "inputs[0].path"),
    ({"inputs": [{"path": "/data/x"}]}, "inputs[0].url"),
    (
        {"inputs": [{"path": "/data/x", "content": "x", "type": "DIRECTORY"}]},
        "inputs[0].content",
    ),
    ({"inputs": [{"path": "/data/x", "content": "x", "type": "LINK"}]}, "inputs[0].type"),
    ({"outputs": [{"path": "/data/x"}]}, "outputs[0].url"),
    ({"outputs": [{"path": "/", "url": "s3://b/"}]}, "outputs[0].path"),
    ({"outputs": [{"path": "/data/*.txt", "url": "s3://b/"}]}, "outputs[0].path_prefix"),
    (
        {"outputs": [{"path": "/data/*.txt", "path_prefix": "/other", "url": "s3://b/"}]},
        "outputs[0].path_prefix",
    ),
    (
        {
            "outputs": [
                {"path": "/data/x", "url": "s3://b/1"},
                {"path": "/data/x", "url": "s3://b/2"},
            ]
        },
        "outputs[1].path",
    ),
    ({"volumes": ["/sys"]}, "volumes[0]"),
    ({"outputs": [{"path": "/out.txt", "url": "s3://b/o"}]}, "outputs[0].path"),
    (
        {"outputs": [{"path": "/*.txt", "path_prefix": "/", "url": "s3://b/"}]},
        "outputs[0].path",
    ),
    (
        {"executors": [{"image": "a", "command": ["true"], "stdout": "/out.log"}]},
        "executors[0].stdout",
    ),
    ({"tags": {"a": 1}}, "tags.a"),
    ({"resources": {"cpu_cores": -1}}, "resources.cpu_cores"),
    ({"resources": {"ram_gb": "lots"}}, "resources.ram_gb"),
]


@pytest.mark.parametrize(("change", "field"), BAD_TASKS)
def test_bad_tasks_are_400_naming_the_field(api: Api, change: dict[str, Any], field: str) -> None:
    """Schema and safety errors answer 400 problem+json naming the field, and store nothing."""
    body = task_body()
    body.update(change)
    problem(api.client.post(f"{api.base}/tasks", json=body), field)
    assert api.list()["tasks"] == []


def test_non_json_and_non_object_bodies_are_400(api: Api) -> None:
    """A body that is not JSON, or not an object, is a 400."""
    headers = {"content-type": "application/json"}
    problem(api.client.post(f"{api.base}/tasks", content=b"{nope", headers=headers), "body")
    problem(api.client.post(f"{api.base}/tasks", content=b"[1]", headers=headers), "body")
    problem(api.client.post(f"{api.base}/tasks", content=b"", headers=headers))


def test_oversize_body_and_content_are_400(tmp_path: Path, redis_db: str) -> None:
    """Bodies over max_body_bytes and content over max_content_bytes are refused."""
    settings = make_settings(
        tmp_path, redis_url=redis_db, max_body_bytes=10_000, max_content_bytes=1_000
    )
    app = create_app(settings, SqliteStore(tmp_path / "t.db"))
    with TestClient(app) as client:
        big = task_body(inputs=[{"path": "/data/x", "content": "x" * 20_000}])
        problem(client.post("/ga4gh/tes/v1/tasks", json=big), "body")
        medium = task_body(inputs=[{"path": "/data/x", "content": "x" * 2_000}])
        problem(client.post("/ga4gh/tes/v1/tasks", json=medium), "inputs[0].content")
        small = task_body(inputs=[{"path": "/data/x", "content": "x" * 500}])
        assert client.post("/ga4gh/tes/v1/tasks", json=small).status_code == 200


def test_default_body_limit_keeps_a_task_within_one_configmap() -> None:
    """The default body limit leaves room in a 1 MiB ConfigMap."""
    assert Settings.model_fields["max_body_bytes"].default < 1024 * 1024


# -- list ----------------------------------------------------------------------------------


def _seed(api: Api) -> dict[str, str]:
    ids = {
        "a1": api.create(name="align-1", tags={"foo": "bar", "baz": "bat"}),
        "a2": api.create(name="align-2", tags={"foo": "bat"}),
        "c1": api.create(name="call-1", tags={"foo": ""}),
        "c2": api.create(name="call-2", tags={}),
        "pct": api.create(name="50%_done", tags={"foo": "bar"}),
    }
    return ids


def _ids(body: dict[str, Any]) -> list[str]:
    return [task["id"] for task in body["tasks"]]


def test_list_newest_first_with_every_filter(api: Api) -> None:
    """name_prefix, state and tag filters (the spec's own table) over HTTP."""
    ids = _seed(api)
    newest_first = [ids[k] for k in ("pct", "c2", "c1", "a2", "a1")]
    assert _ids(api.list()) == newest_first
    assert all(set(t) == {"id", "state"} for t in api.list()["tasks"])
    assert _ids(api.list(name_prefix="align-")) == [ids["a2"], ids["a1"]]
    assert _ids(api.list(name_prefix="50%_")) == [ids["pct"]]
    assert _ids(api.list(name_prefix="5")) == [ids["pct"]]
    assert _ids(api.list(name_prefix="zzz")) == []
    # the spec's filter table
    assert _ids(api.list(tag_key="foo", tag_value="bar")) == [ids["pct"], ids["a1"]]
    assert _ids(api.list(tag_key="foo")) == [ids["pct"], ids["c1"], ids["a2"], ids["a1"]]
    assert _ids(api.list(tag_key="foo", tag_value="")) == _ids(api.list(tag_key="foo"))
    assert _ids(api.list(tag_key=["foo", "baz"], tag_value=["bar", "bat"])) == [ids["a1"]]
    assert _ids(api.list(tag_key=["foo", "baz"], tag_value=["bar"])) == [ids["a1"]]
    assert _ids(api.list(tag_key="nope")) == []
    # state, combined with the others
    api.client.post(f"{api.base}/tasks/{ids['a2']}:cancel")
    assert _ids(api.list(state="QUEUED", name_prefix="align")) == [ids["a1"]]
    assert _ids(api.list(state="CANCELING")) == [ids["a2"]]
    assert _ids(api.list(state="CANCELING", tag_key="foo", tag_value="bat")) == [ids["a2"]]
    basic = api.list(view="BASIC", name_prefix="align-1")["tasks"][0]
    assert basic["name"] == "align-1" and "content" not in basic["inputs"][0]
    full = api.list(view="FULL", name_prefix="align-1")["tasks"][0]
    assert full["inputs"][0]["content"] == "hi\n"


def test_list_pagination(api: Api) -> None:
    """page_size and page_token walk every task once, newest first."""
    created = [api.create(name=f"t{i}") for i in range(7)]
    seen: list[str] = []
    params: dict[str, Any] = {"page_size": 3}
    while True:
        body = api.list(**params)
        seen += _ids(body)
        if "next_page_token" not in body:
            break
        params["page_token"] = body["next_page_token"]
    assert seen == list(reversed(created))
    assert "next_page_token" not in api.list(page_size=7)
    assert "next_page_token" in api.list(page_size=6)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page_size": 2048}, "page_size"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": "many"}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"state": "DONE"}, "state"),
        ({"view": "EVERYTHING"}, "view"),
        ({"tag_value": "x"}, "tag_value"),
    ],
)
def test_bad_list_parameters_are_400(api: Api, params: dict[str, Any], field: str) -> None:
    """Out-of-range or malformed list parameters name the parameter."""
    problem(api.client.get(f"{api.base}/tasks", params=params), field)


def test_page_size_limits(api: Api) -> None:
    """2047 is accepted; the default page is 256."""
    assert api.list(page_size=2047)["tasks"] == []
    for i in range(257):
        api.store.create(_record(api, f"bulk-{i}"))
    body = api.list()
    assert len(body["tasks"]) == 256 and "next_page_token" in body


def _record(api: Api, name: str) -> Any:
    from app import ids
    from app.models import State
    from app.store.base import TaskRecord

    task_id = ids.new_id()
    doc = {
        "id": task_id,
        "state": "QUEUED",
        "name": name,
        "executors": [{"image": "a", "command": ["true"]}],
        "creation_time": "t",
    }
    return TaskRecord(id=task_id, state=State.QUEUED, owner="anonymous", doc=doc)


# -- queue and cancel ----------------------------------------------------------------------


def _run_worker(api: Api) -> None:
    from worker import context

    context.install(context.Context(settings=api.settings, store=api.store))
    queue.run_worker(api.settings, queue.connect(api.settings), burst=True)


def test_create_enqueues_submit_and_worker_leaves_it_queued(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The API enqueues submit-<id> on Redis; the worker keeps the task QUEUED and says why."""
    task_id = api.create()
    connection = redis.Redis.from_url(str(api.settings.redis_url))
    submits = Queue(api.settings.rq_queue, connection=connection)
    assert submits.job_ids == [f"submit-{task_id}"]
    with caplog.at_level(logging.INFO):
        _run_worker(api)
    assert api.get(task_id)["state"] == "QUEUED"
    assert any(task_id in r.message and "stays QUEUED" in r.message for r in caplog.records)
    tq = queue.TaskQueue(api.settings, connection)
    assert tq.job_status("submit", task_id) == "finished"


@pytest.mark.parametrize("colon", [":", "%3A", "%3a"])
def test_cancel_queued_task(api: Api, colon: str) -> None:
    """CancelTask: QUEUED -> CANCELING at once, cancel job on the high queue, then CANCELED."""
    task_id = api.create()
    response = api.client.post(f"{api.base}/tasks/{task_id}{colon}cancel")
    assert response.status_code == 200, response.text
    spec.check("tesCancelTaskResponse", response.json())
    assert api.get(task_id)["state"] == "CANCELING"
    connection = redis.Redis.from_url(str(api.settings.redis_url))
    assert Queue(api.settings.rq_cancel_queue, connection=connection).job_ids == [
        f"cancel-{task_id}"
    ]
    _run_worker(api)
    assert api.get(task_id)["state"] == "CANCELED"
    # terminal: a 200 that changes nothing
    again = api.client.post(f"{api.base}/tasks/{task_id}:cancel")
    assert again.status_code == 200 and again.json() == {}
    assert api.get(task_id)["state"] == "CANCELED"


def test_create_survives_a_queue_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis down: the task is still stored QUEUED (the sweep submits it later), never a 500."""
    settings = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    store = SqliteStore(tmp_path / "t.db")
    app = create_app(settings, store)
    with TestClient(app) as client, caplog.at_level(logging.WARNING):
        response = client.post("/ga4gh/tes/v1/tasks", json=task_body())
        assert response.status_code == 200, response.text
        assert services_of(app).intake.flush()  # the enqueue follows the answer
        task_id = response.json()["id"]
        assert client.get(f"/ga4gh/tes/v1/tasks/{task_id}").json()["state"] == "QUEUED"
        assert client.post(f"/ga4gh/tes/v1/tasks/{task_id}:cancel").status_code == 200
    assert any("sweep" in r.message for r in caplog.records)


@pytest.mark.parametrize("fast", [True, False], ids=["front door", "spec-driven"])
def test_store_outage_is_503_not_500(tmp_path: Path, fast: bool) -> None:
    """A store that cannot answer gives 503 problem+json, not a traceback, on every route."""
    from app.store.base import StoreError

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database is locked")

    class Down(SqliteStore):
        get = get_rendered = list = list_rendered = down

        def create_many(self, records: Any) -> Any:
            raise StoreError("database is locked")

    settings = make_settings(tmp_path)
    app = create_app(settings, Down(tmp_path / "t.db"))
    services_of(app).fast_paths = fast
    with TestClient(app, raise_server_exceptions=False) as client:
        for response in (
            client.get("/ga4gh/tes/v1/tasks/x"),
            client.get("/ga4gh/tes/v1/tasks/x?view=FULL"),
            client.get("/ga4gh/tes/v1/tasks?view=BASIC"),
            client.post("/ga4gh/tes/v1/tasks", json=task_body()),
        ):
            body = problem(response, status=503)
            assert "Traceback" not in json.dumps(body)


def test_cancel_job_logs_the_cancel_once(api: Api) -> None:
    """The cancel job ends the attempt; a note the watcher already wrote is not repeated."""
    from worker import states

    task_id = api.create()
    api.store.append_attempt(task_id, {"logs": [], "outputs": [], "system_logs": ["x"]})
    api.client.post(f"{api.base}/tasks/{task_id}:cancel")
    api.store.update_attempt(task_id, 0, {"system_logs": ["x", states.CANCELED_NOTE]})
    _run_worker(api)
    attempt = api.get(task_id, "FULL")["logs"][0]
    assert api.get(task_id)["state"] == "CANCELED"
    assert attempt["system_logs"] == ["x", states.CANCELED_NOTE] and attempt["end_time"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_each_task_is_stored_with_the_localqueue_its_job_gets(
    tmp_path: Path, redis_db: str, store_kind: str, content_type: str
) -> None:
    """The stored queue (metrics, dashboard) is the worker's: preemptible tasks go to the
    preemptible queue, on both CreateTask routes (the front door and the spec-driven one)."""
    settings = make_settings(tmp_path, redis_url=redis_db, preemptible_queue="tes-spot")
    store = open_store(store_kind, tmp_path)
    app = create_app(settings, store, queue.TaskQueue(settings, queue.connect(settings)))
    bodies = {
        "tes": task_body(),
        "tes-spot": task_body(resources={"preemptible": True}),
    }
    with TestClient(app) as client:
        for want, body in bodies.items():
            response = client.post(
                "/ga4gh/tes/v1/tasks",
                content=json.dumps(body),
                headers={"content-type": content_type},
            )
            assert response.status_code == 200, response.text
            record = store.get(response.json()["id"])
            assert record is not None and record.queue == want
        assert services_of(app).intake.flush()
    store.close()
