"""Ownership and queue routing through HTTP, against both stores: each principal sees and
cancels only its own tasks (others' are 404), admins see all, and tasks go to the route's
queue."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock
import pytest
from starlette.testclient import TestClient

from app import queue
from app.main import create_app
from app.store.base import TaskStore
from app.store.mongo import MongoStore
from app.store.sqlite import SqliteStore
from tests.conftest import make_settings
from tests.integration.test_auth import htpasswd_line
from worker import jobspec

BASES = ["/ga4gh/tes/v1", "/v1"]
USERS = {
    "alice": "group:team-a",
    "bob": "group:team-b",
    "erin": "",  # in no team: the routes deny her
    "root": "admin",  # the flag in the users file
    "carol": "group:ops",  # an admin by KUEUE_TES_ADMINS=group:ops
    "dave": "",  # an admin by KUEUE_TES_ADMINS=dave
}
ROUTES = """
default: deny
routes:
  - principals: [root, carol, dave]
    queue: tes
  - groups: [team-a]
    queue: team-a
    queues: [team-a, team-a-gpu]
    priority_classes: [tes-normal, tes-high]
    gpu_types: [nvidia]
    max_gpus: 2
    max_run_seconds: 86400
  - groups: [team-b]
    queue: team-b
    priority_classes: [tes-low]
"""


def headers(name: str) -> dict[str, str]:
    """Basic credentials of a user; the password is the name reversed."""
    raw = f"{name}:{name[::-1]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


class Api:
    """The app with six users on one store, at one base path."""

    def __init__(self, client: TestClient, store: TaskStore, base: str) -> None:
        self.client, self.store, self.base = client, store, base

    def create(self, user: str, **body: Any) -> str:
        """Create a task as ``user``; return its id."""
        task = {"executors": [{"image": "alpine", "command": ["true"]}], **body}
        response = self.client.post(f"{self.base}/tasks", json=task, headers=headers(user))
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def get(self, user: str, task_id: str, **params: str) -> Any:
        """GetTask as ``user``."""
        url = f"{self.base}/tasks/{task_id}"
        return self.client.get(url, params=params, headers=headers(user))

    def cancel(self, user: str, task_id: str) -> Any:
        """CancelTask as ``user``."""
        url = f"{self.base}/tasks/{task_id}:cancel"
        return self.client.post(url, headers=headers(user))

    def ids(self, user: str, **params: Any) -> list[str]:
        """Every id ListTasks gives ``user``, walking all pages."""
        out: list[str] = []
        token = None
        while True:
            query = dict(params, **({"page_token": token} if token else {}))
            response = self.client.get(f"{self.base}/tasks", params=query, headers=headers(user))
            assert response.status_code == 200, response.text
            body = response.json()
            out += [task["id"] for task in body["tasks"]]
            token = body.get("next_page_token")
            if not token:
                return out


@pytest.fixture(params=["sqlite", "mongo"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    """Both store implementations."""
    opened: TaskStore
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "tasks.db")
    else:
        opened = MongoStore(mongomock.MongoClient(), "kueue_tes_test")
    yield opened
    opened.close()


@pytest.fixture(params=BASES)
def api(request: pytest.FixtureRequest, store: TaskStore, tmp_path: Path) -> Iterator[Api]:
    """Basic auth with the six users, the routes above, on an embedded queue."""
    users = tmp_path / "htpasswd"
    users.write_text("".join(htpasswd_line(n, n[::-1], f) + "\n" for n, f in USERS.items()))
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    settings = make_settings(
        tmp_path,
        auth="basic",
        basic_users_file=users,
        admins=["dave", "group:ops"],
        routes_file=routes,
        allowed_priority_classes=["tes-low", "tes-normal", "tes-high"],
    )
    app = create_app(settings, store, queue.TaskQueue(settings, queue.connect(settings)))
    with TestClient(app) as client:
        yield Api(client, store, str(request.param))


def test_others_tasks_are_404_like_unknown_ids(api: Api) -> None:
    """bob cannot get alice's task in any view; the answer is an unknown id's, not a 403."""
    task_id = api.create("alice", name="secret")
    assert api.get("alice", task_id).status_code == 200
    for view in ("MINIMAL", "BASIC", "FULL"):
        response = api.get("bob", task_id, view=view)
        assert response.status_code == 404, response.text
    unknown = api.get("bob", "0" * 26).json()
    unknown["detail"] = unknown["detail"].replace("0" * 26, task_id)
    assert api.get("bob", task_id).json() == unknown


def test_others_tasks_cannot_be_canceled(api: Api) -> None:
    """bob's cancel of alice's task is a 404 and changes nothing."""
    task_id = api.create("alice")
    assert api.cancel("bob", task_id).status_code == 404
    assert api.get("alice", task_id).json()["state"] == "QUEUED"
    assert api.cancel("alice", task_id).status_code == 200
    assert api.get("alice", task_id).json()["state"] == "CANCELING"


def test_listing_never_shows_another_owners_task(api: Api) -> None:
    """With every filter, view and page size, each user lists exactly its own tasks."""
    made: dict[str, list[str]] = {"alice": [], "bob": []}
    for i in range(6):
        for user, ids in made.items():
            tags = {"project": f"p{i % 2}", "owner-hint": user}
            ids.append(api.create(user, name=f"align-{i}", tags=tags))
    canceled = {"alice": made["alice"][0], "bob": made["bob"][1]}
    for user, task_id in canceled.items():
        assert api.cancel(user, task_id).status_code == 200
    for user, own in made.items():
        newest_first = own[::-1]
        queries: list[tuple[dict[str, Any], list[str]]] = [
            ({}, newest_first),
            ({"view": "BASIC"}, newest_first),
            ({"name_prefix": "align-"}, newest_first),
            ({"name_prefix": "align-3"}, [own[3]]),
            ({"state": "QUEUED"}, [t for t in newest_first if t != canceled[user]]),
            ({"state": "CANCELING"}, [canceled[user]]),
            ({"tag_key": "project", "tag_value": "p1"}, newest_first[0::2]),
            ({"tag_key": "owner-hint", "tag_value": "bob"}, newest_first if user == "bob" else []),
            ({"tag_key": "owner-hint"}, newest_first),
            ({"name_prefix": "align-", "state": "QUEUED", "tag_key": "project"},
             [t for t in newest_first if t != canceled[user]]),
        ]  # fmt: skip
        for query, expected in queries:
            for size in (1, 2, 5, 256):
                got = api.ids(user, page_size=size, **query)
                assert got == expected, (user, query, size)


def test_admins_see_and_cancel_every_task(api: Api) -> None:
    """root (flag), carol (admin group) and dave (admin name) see all; they own their own."""
    alices, bobs = api.create("alice"), api.create("bob")
    for admin in ("root", "carol", "dave"):
        assert api.get(admin, alices).status_code == 200
        assert {alices, bobs} <= set(api.ids(admin))
    own = api.create("root")
    assert own not in api.ids("alice") and api.get("alice", own).status_code == 404
    assert api.cancel("carol", bobs).status_code == 200
    assert api.get("bob", bobs).json()["state"] == "CANCELING"


def test_owner_is_never_in_the_tes_json(api: Api) -> None:
    """The stored owner does not appear in any view or listing."""
    task_id = api.create("alice", tags={"k": "v"})
    assert api.store.get(task_id) is not None
    assert api.store.get(task_id).owner == "alice"  # type: ignore[union-attr]
    full = api.get("alice", task_id, view="FULL").json()
    listed = api.client.get(f"{api.base}/tasks", params={"view": "FULL"}, headers=headers("alice"))
    for doc in (full, listed.json()["tasks"][0]):
        assert "owner" not in doc and "alice" not in str(doc)


# -- routing through the API --------------------------------------------------------------------


def test_the_job_carries_the_routed_queue_and_class(api: Api, tmp_path: Path) -> None:
    """alice (team-a) lands in team-a with its run-time cap; her asked class and queue stand."""
    settings = make_settings(tmp_path)
    plain = api.create("alice")
    record = api.store.get(plain)
    assert record is not None
    labels = jobspec.build_job(record.doc, settings)["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert labels["kueue.x-k8s.io/max-exec-time-seconds"] == "86400"
    assert "kueue.x-k8s.io/priority-class" not in labels
    params = {"queue": "team-a-gpu", "priority_class": "tes-high", "gpus": "2"}
    asked = api.create("alice", resources={"backend_parameters": params})
    record = api.store.get(asked)
    assert record is not None
    job = jobspec.build_job(record.doc, settings)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpu"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "tes-high"
    shown = api.get("alice", asked, view="BASIC").json()["resources"]["backend_parameters"]
    assert shown == dict(params, max_run_seconds="86400")
    bobs = api.store.get(api.create("bob"))
    assert bobs is not None
    labels = jobspec.build_job(bobs.doc, settings)["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-b"
    assert "kueue.x-k8s.io/max-exec-time-seconds" not in labels


def test_outside_the_envelope_is_400_when_strict_else_dropped(api: Api) -> None:
    """Outside one's route (another team's queue or class, over its GPUs or run time): a 400
    naming the key when strict, else dropped with a system log."""
    url = f"{api.base}/tasks"
    for user, key, value in (
        ("bob", "queue", "team-a"),
        ("bob", "priority_class", "tes-high"),
        ("alice", "gpus", "3"),
        ("alice", "gpu_type", "amd"),
        ("alice", "max_run_seconds", "86401"),
    ):
        resources = {"backend_parameters": {key: value}, "backend_parameters_strict": True}
        body = {"executors": [{"image": "alpine", "command": ["true"]}], "resources": resources}
        response = api.client.post(url, json=body, headers=headers(user))
        assert response.status_code == 400, response.text
        assert response.json()["field"] == f"resources.backend_parameters.{key}"
    task_id = api.create("bob", resources={"backend_parameters": {"queue": "team-a"}})
    record = api.store.get(task_id)
    assert record is not None
    assert record.doc["resources"]["backend_parameters"] == {"queue": "team-b"}
    assert any("'queue' was ignored" in note and "team-b" in note for note in record.notes)
    labels = jobspec.build_job(record.doc, make_settings(Path("/nonexistent")))["metadata"]
    assert labels["labels"]["kueue.x-k8s.io/queue-name"] == "team-b"


def test_principals_no_route_admits_are_403(api: Api) -> None:
    """erin matches no route and the default denies: 403 on create; reading is still fine."""
    url = f"{api.base}/tasks"
    body = {"executors": [{"image": "alpine", "command": ["true"]}]}
    response = api.client.post(url, json=body, headers=headers("erin"))
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "erin" in response.json()["detail"]
    assert api.ids("erin") == []
