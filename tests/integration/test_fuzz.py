"""Property-based fuzzing of the API against our TES spec, with schemathesis and hypothesis.

Every operation is fuzzed under ``/ga4gh/tes/v1`` (positive and negative data, the spec's
coverage cases, a bounded number of random examples, derandomized) on a SQLite store and a
real redis-server. Nothing may answer 5xx; a 200 must carry ``application/json`` and conform
to the spec exactly (``tests.spec.check``: no extra fields); anything else must be a 4xx
``application/problem+json``. The spec only declares 200, so the undeclared 400/404 answers
are expected and ``status_code_conformance`` is not run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from app import queue
from app.main import create_app
from app.models import State
from app.store.sqlite import SqliteStore
from tests import spec
from tests.conftest import ROOT, make_settings

BASE_URL = "http://testserver/ga4gh/tes/v1"
SEED = 20240611
MAX_EXAMPLES = 25

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "base-url": BASE_URL,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
    }
)
SCHEMA = schemathesis.openapi.from_path(ROOT / "openapi" / "tes.yaml", config=CONFIG)
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]

#: The spec component every operation's 200 body must be, exactly.
COMPONENTS = {
    "GET /service-info": "tesServiceInfo",
    "GET /tasks": "tesListTasksResponse",
    "POST /tasks": "tesCreateTaskResponse",
    "GET /tasks/{id}": "tesTask",
    "POST /tasks/{id}:cancel": "tesCancelTaskResponse",
}

#: The operations whose tasks are rendered in the requested view.
MINIMAL_CAPABLE = {"GET /tasks", "GET /tasks/{id}"}

#: The same settings for the plain hypothesis tests below as schemathesis gets from CONFIG.
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

MODES = st.sampled_from([schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])


@dataclass
class Fuzzed:
    """The app under fuzz, its store, and the ids of the real tasks seeded into it."""

    app: Any
    store: SqliteStore
    task_ids: list[str]


def full_task() -> dict[str, Any]:
    """A valid task that sets every client field the spec has."""
    return {
        "name": "seeded-full",
        "description": "every field",
        "inputs": [
            {"name": "in", "description": "inline", "path": "/data/in.txt", "content": "hi\n"},
            {"path": "/data/ref", "url": "s3://bucket/ref/", "type": "DIRECTORY"},
        ],
        "outputs": [
            {"name": "out", "path": "/data/out.txt", "url": "s3://bucket/out.txt"},
            {"path": "/data/*.log", "path_prefix": "/data/", "url": "s3://bucket/logs/"},
        ],
        "resources": {
            "cpu_cores": 2,
            "ram_gb": 1.5,
            "disk_gb": 10,
            "preemptible": True,
            "zones": ["zone-a"],
            "backend_parameters": {"queue": "default"},
        },
        "executors": [
            {
                "image": "alpine",
                "command": ["cat", "/data/in.txt"],
                "workdir": "/data",
                "stdout": "/data/out.txt",
                "stderr": "/data/err.log",
                "env": {"A": "1"},
                "ignore_error": True,
            }
        ],
        "volumes": ["/vol/shared"],
        "tags": {"project": "fuzz", "empty": ""},
    }


def small_task(name: str) -> dict[str, Any]:
    """A small valid task named ``name``."""
    return {
        "name": name,
        "executors": [{"image": "alpine", "command": ["true"]}],
        "tags": {"project": "fuzz"},
    }


ATTEMPT: dict[str, Any] = {
    "logs": [
        {"exit_code": 0, "stdout": "out", "stderr": "err", "start_time": "2026-01-01T00:00:01Z"}
    ],
    "outputs": [{"url": "s3://bucket/out.txt", "path": "/data/out.txt", "size_bytes": 12}],
    "metadata": {"node": "worker-1"},
    "system_logs": ["admitted"],
    "start_time": "2026-01-01T00:00:00Z",
    "end_time": "2026-01-01T00:00:02Z",
}


def seed_tasks(app: Any, store: SqliteStore) -> list[str]:
    """Create tasks through the API, then move some through states and attempts in the store."""
    create = SCHEMA["/tasks"]["POST"]
    ids = []
    for body in [full_task(), *(small_task(f"seeded-{i}") for i in range(6))]:
        response = create.Case(body=body, media_type="application/json").call(app=app)
        assert response.status_code == 200, response.text
        ids.append(str(response.json()["id"]))
    full, running, complete, failed, canceled, system_error, _queued = ids
    for task_id in (full, running, complete, failed):
        assert store.transition(task_id, State.RUNNING)
        store.append_attempt(task_id, ATTEMPT)
    assert store.transition(complete, State.COMPLETE)
    assert store.transition(failed, State.EXECUTOR_ERROR)
    assert store.transition(canceled, State.CANCELING)
    assert store.transition(canceled, State.CANCELED)
    store.append_attempt(system_error, {"logs": [], "outputs": [], "system_logs": ["no node"]})
    assert store.transition(system_error, State.SYSTEM_ERROR)
    return ids


@pytest.fixture(scope="module")
def fuzzed(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """One app for the whole module (hypothesis reruns a test body, not its fixtures)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    tmp_path = tmp_path_factory.mktemp("fuzz")
    app_settings = make_settings(tmp_path, redis_url=redis_url)
    store = SqliteStore(tmp_path / "tasks.db")
    app = create_app(app_settings, store, queue.TaskQueue(app_settings, queue.connect(app_settings)))
    yield Fuzzed(app, store, seed_tasks(app, store))
    store.close()
    client.flushdb()


def minimal_view(case: schemathesis.Case) -> bool:
    """Whether ``case`` asks for tasks in the MINIMAL view (the default), i.e. only id and state.

    The spec's tesTask requires ``executors``, yet its own MINIMAL view has only id and state,
    so schemathesis's ``response_schema_conformance`` can't judge those bodies:
    ``spec.check(..., minimal=True)`` does.
    """
    return case.operation.label in MINIMAL_CAPABLE and case.query.get("view", "MINIMAL") == "MINIMAL"


def check_response(case: schemathesis.Case, response: schemathesis.Response) -> None:
    """No 5xx; 200 is exactly the spec's JSON body; anything else is a 4xx problem+json."""
    content_type = (response.headers.get("content-type") or [""])[0]
    where = f"{case.operation.label}: {case.as_curl_command()}\n{response.status_code} {response.text}"
    assert response.status_code < 500, where
    if response.status_code == 200:
        assert content_type.startswith("application/json"), where
        spec.check(COMPONENTS[case.operation.label], response.json(), minimal=minimal_view(case))
        return
    assert 400 <= response.status_code < 500, where
    assert content_type.startswith("application/problem+json"), where
    problem = response.json()
    assert problem["status"] == response.status_code, where
    assert problem["title"] and problem["detail"], where


def call(case: schemathesis.Case, fuzzed: Fuzzed) -> schemathesis.Response:
    """Send ``case`` to the app in process, run the schemathesis checks, then ours."""
    excluded = [response_schema_conformance] if minimal_view(case) else []
    response = case.call_and_validate(app=fuzzed.app, checks=CHECKS, excluded_checks=excluded)
    check_response(case, response)
    return response


@SCHEMA.parametrize()
def test_operation(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    """Every operation, fuzzed from the spec: no 5xx, exact 200 bodies, problem+json 4xx."""
    call(case, fuzzed)


@pytest.mark.parametrize("path", ["/tasks/{id}", "/tasks/{id}:cancel"])
def test_real_ids(fuzzed: Fuzzed, path: str) -> None:
    """GetTask (every view) and CancelTask on the seeded tasks, in every state, fuzzed."""
    operation = SCHEMA[path]["GET" if path == "/tasks/{id}" else "POST"]

    @FUZZ_SETTINGS
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(fuzzed.task_ids), label="id")
        mode = data.draw(MODES, label="mode")
        case = data.draw(operation.as_strategy(mode, path_parameters={"id": task_id}))
        response = call(case, fuzzed)
        if mode is schemathesis.GenerationMode.POSITIVE:
            assert response.status_code == 200, response.text

    run()


def test_real_ids_every_view(fuzzed: Fuzzed) -> None:
    """Every seeded task in every view conforms, so each state and log shape is rendered."""
    operation = SCHEMA["/tasks/{id}"]["GET"]
    for task_id in fuzzed.task_ids:
        for view in (None, "MINIMAL", "BASIC", "FULL"):
            query = {} if view is None else {"view": view}
            case = operation.Case(path_parameters={"id": task_id}, query=query)
            assert call(case, fuzzed).status_code == 200


def test_list_pages(fuzzed: Fuzzed) -> None:
    """ListTasks with real page tokens: paging a fuzzed query yields its one-page answer."""
    operation = SCHEMA["/tasks"]["GET"]

    def listed(query: dict[str, Any]) -> dict[str, Any]:
        response = call(operation.Case(query=query), fuzzed)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    @FUZZ_SETTINGS
    @given(
        page_size=st.integers(1, 4),
        view=st.sampled_from(["MINIMAL", "BASIC", "FULL"]),
        state=st.none() | st.sampled_from([s.value for s in State]),
        prefix=st.sampled_from(["seeded", "seeded-1", "seeded-full", "nope"]),
    )
    def run(page_size: int, view: str, state: str | None, prefix: str) -> None:
        query: dict[str, Any] = {"view": view, "name_prefix": prefix}
        if state is not None:
            query["state"] = state
        whole = listed({**query, "page_size": 2047})
        assert "next_page_token" not in whole
        query["page_size"] = page_size
        paged: list[dict[str, Any]] = []
        for _ in range(len(whole["tasks"]) // page_size + 1):
            page = listed(query)
            assert 1 <= len(page["tasks"]) <= page_size or not page["tasks"] and not paged
            paged += page["tasks"]
            if "next_page_token" not in page:
                break
            query["page_token"] = page["next_page_token"]
        else:
            pytest.fail(f"ListTasks pages on past its one-page answer: {query}")
        assert paged == whole["tasks"]

    run()
