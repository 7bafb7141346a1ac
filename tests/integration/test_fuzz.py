"""Property-based fuzzing of the API against our TES spec, with schemathesis and hypothesis.

Every operation is fuzzed under ``/ga4gh/tes/v1`` (positive and negative data, the spec's
coverage cases, a bounded number of random examples, derandomized) on a SQLite store and a
real redis-server. Nothing may answer 5xx; a 200 must carry ``application/json`` and conform
to the spec exactly (``tests.spec.check``: no extra fields); anything else must be a 4xx
``application/problem+json``. The spec only declares 200, so the undeclared 400/404 answers
are expected and ``status_code_conformance`` is not run.

Beyond the generated cases: GetTask and CancelTask are fuzzed on real tasks in every state,
ListTasks is paged with real tokens, and generated task bodies, repaired to pass the server's
own rules, must be accepted and echoed exactly by the FULL view.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from app import queue
from app.main import create_app
from app.models import State
from app.settings import Settings
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
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            # Shrinking a failing task body can take minutes; the failure is reported unshrunk.
            "no-shrink": True,
        },
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
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)

MODES = st.sampled_from(list(schemathesis.GenerationMode))


@dataclass
class Fuzzed:
    """The app under fuzz, its settings, and the ids of the real tasks seeded into it."""

    app: Any
    settings: Settings
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
        store.append_attempt(task_id, copy.deepcopy(ATTEMPT))
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
    # Module-scoped, so it takes the session's redis-server and flushes it as redis_db would.
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    tmp_path = tmp_path_factory.mktemp("fuzz")
    app_settings = make_settings(tmp_path, redis_url=redis_url)
    store = SqliteStore(tmp_path / "tasks.db")
    app = create_app(
        app_settings, store, queue.TaskQueue(app_settings, queue.connect(app_settings))
    )
    yield Fuzzed(app, app_settings, seed_tasks(app, store))
    store.close()
    client.flushdb()


def minimal_view(case: schemathesis.Case) -> bool:
    """Whether ``case`` asks for tasks in the MINIMAL view (the default), i.e. only id and state.

    The spec's tesTask requires ``executors``, yet its own MINIMAL view has only id and state,
    so schemathesis's ``response_schema_conformance`` can't judge those bodies:
    ``spec.check(..., minimal=True)`` does.
    """
    view = (case.query or {}).get("view", "MINIMAL")
    return case.operation.label in MINIMAL_CAPABLE and view == "MINIMAL"


def check_response(case: schemathesis.Case, response: schemathesis.Response) -> None:
    """No 5xx; 200 is exactly the spec's JSON body; anything else is a 4xx problem+json."""
    content_type = (response.headers.get("content-type") or [""])[0]
    where = (
        f"{case.operation.label}: {case.as_curl_command()}\n{response.status_code} {response.text}"
    )
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


ODD_IDS = {
    "newline": "a\nb",
    "newline-last": "ab\n",
    "newline-only": "\n",
    "cr": "a\rb",
    "nul": "a\x00b",
    "line-separator": "a\u2028b",
    "dotdot": "..",
}


@pytest.mark.parametrize("path", ["/tasks/{id}", "/tasks/{id}:cancel"])
@pytest.mark.parametrize("task_id", list(ODD_IDS.values()), ids=list(ODD_IDS))
def test_odd_ids_are_unknown(fuzzed: Fuzzed, path: str, task_id: str) -> None:
    """Ids with control or separator characters are unknown ids: 404, never a 500."""
    operation = SCHEMA[path]["GET" if path == "/tasks/{id}" else "POST"]
    # Generated path parameters come percent-encoded; so must these.
    case = operation.Case(path_parameters={"id": quote(task_id, safe="")})
    assert call(case, fuzzed).status_code == 404


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
            assert 1 <= len(page["tasks"]) <= page_size or (not page["tasks"] and not paged)
            paged += page["tasks"]
            if "next_page_token" not in page:
                break
            query["page_token"] = page["next_page_token"]
        else:
            pytest.fail(f"ListTasks pages on past its one-page answer: {query}")
        assert paged == whole["tasks"]

    run()


def repaired(body: Any, honoured: list[str]) -> dict[str, Any]:
    """A generated tesTask made to pass the server's own rules, which the spec can't express.

    Paths become distinct absolute ones, executors non-empty, inputs carry url xor content and
    backend_parameters_strict is off; every other generated value (text, maps, numbers) stays.
    """
    task = dict(body) if isinstance(body, dict) else {}
    executors = [e for e in task.get("executors") or [] if isinstance(e, dict)]
    task["executors"] = []
    for i, executor in enumerate(executors or [{}]):
        executor = {**executor, "image": executor.get("image") or "alpine"}
        executor["command"] = executor.get("command") or ["true"]
        for name in ("workdir", "stdin", "stdout", "stderr"):
            if name in executor:
                executor[name] = f"/work/{i}/{name}"
        env = executor.get("env")
        if isinstance(env, dict):
            executor["env"] = {k: v for k, v in env.items() if k and "=" not in k and "\0" not in k}
        task["executors"].append(executor)
    if "inputs" in task:
        task["inputs"] = [
            {**item, "path": f"/in/{i}", "url": "s3://bucket/in", "type": item.get("type", "FILE")}
            if "content" not in item
            else {k: v for k, v in item.items() if k != "url"}
            | {"path": f"/in/{i}", "type": "FILE"}
            for i, item in enumerate(task["inputs"])
        ]
    if "outputs" in task:
        task["outputs"] = [
            {k: v for k, v in item.items() if k != "path_prefix"}
            | {"path": f"/out/{i}", "url": item.get("url") or "s3://bucket/out"}
            | {"type": item.get("type", "FILE")}
            for i, item in enumerate(task["outputs"])
        ]
    if "volumes" in task:
        task["volumes"] = [f"/vol/{i}" for i in range(len(task["volumes"]))]
    if isinstance(task.get("resources"), dict):
        resources = task["resources"] = dict(task["resources"])
        for name in ("cpu_cores", "ram_gb", "disk_gb"):
            if name in resources:
                resources[name] = abs(resources[name])
        resources["backend_parameters_strict"] = False
        honoured_only = {
            k: v for k, v in (resources.get("backend_parameters") or {}).items() if k in honoured
        }
        if "backend_parameters" in resources:
            resources["backend_parameters"] = honoured_only
    return task


def echoed(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` as the FULL view must echo it: only the spec's fields, read-only ones dropped."""
    if isinstance(value, dict) and "properties" in schema:
        return {
            key: echoed(item, schema["properties"][key])
            for key, item in value.items()
            if key in schema["properties"] and not schema["properties"][key].get("readOnly")
        }
    if isinstance(value, list) and "items" in schema:
        return [echoed(item, schema["items"]) for item in value]
    return value


def test_created_tasks_round_trip(fuzzed: Fuzzed) -> None:
    """Generated tasks, once valid for the server, are accepted and echoed exactly by FULL."""
    create = SCHEMA["/tasks"]["POST"]
    get = SCHEMA["/tasks/{id}"]["GET"]
    honoured = fuzzed.settings.backend_parameters
    task_schema = spec.schema("tesTask")

    @FUZZ_SETTINGS
    @given(case=create.as_strategy())
    def run(case: schemathesis.Case) -> None:
        case.body = repaired(case.body, honoured)
        response = call(case, fuzzed)
        assert response.status_code == 200, response.text
        task_id = response.json()["id"]
        full = call(get.Case(path_parameters={"id": task_id}, query={"view": "FULL"}), fuzzed)
        shown = full.json()
        assert (shown["id"], shown["state"]) == (task_id, "QUEUED")
        expected = echoed(case.body, task_schema)
        assert {k: v for k, v in shown.items() if k not in ("id", "state", "creation_time")} == (
            expected
        )

    run()
