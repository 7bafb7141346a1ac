"""Queue routing: the routes file, the envelope of a principal, and the Job it yields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app import policy, routing, validation
from app.credentials import Principal
from app.models import State, TaskIn
from app.settings import DEFAULT_BACKEND_PARAMETERS, Settings
from worker import jobspec

SETTINGS = Settings(
    data_dir=Path("/nonexistent"),
    mongo_uri=None,
    redis_url=None,
    default_queue="tes",
    allowed_queues=["tes", "tes-batch"],
    allowed_priority_classes=["tes-low", "tes-normal"],
    gpu_resources=["nvidia=nvidia.com/gpu", "amd=amd.com/gpu"],
    max_gpus=4,
    max_run_seconds=7 * 86400,
)
ROUTES = """
# Keycloak groups arrive with their full path when the mapper says so.
default:
  priority_classes: [tes-low]
  max_run_seconds: 86400
routes:
  - principals: [alice]
    groups: [/team-a]
    queue: team-a
    queues: [team-a, team-a-gpu]
    priority_classes: [tes-normal, tes-high]
    gpu_types: [nvidia]
    max_gpus: 2
    max_run_seconds: 172800
  - groups: [team-b, /team-a]
    queue: team-b
"""
QUEUE, CLASS, MAX_EXEC = (
    "kueue.x-k8s.io/queue-name",
    "kueue.x-k8s.io/priority-class",
    "kueue.x-k8s.io/max-exec-time-seconds",
)


def principal(name: str, *groups: str) -> Principal:
    """A non-admin principal."""
    return Principal(name, frozenset(groups))


def routes(text: str = ROUTES) -> routing.Routes:
    """The routes of ``text`` under SETTINGS."""
    return routing.parse(text, SETTINGS)


def created(
    who: Principal, params: dict[str, str] | None = None, strict: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Check a task as CreateTask does for ``who``; return the stored doc and its notes."""
    resources: dict[str, Any] = {"backend_parameters": params} if params else {}
    if strict:
        resources["backend_parameters_strict"] = True
    body: dict[str, Any] = {"executors": [{"image": "alpine", "command": ["true"]}]}
    if resources:
        body["resources"] = resources
    task = TaskIn.model_validate(body)
    envelope = routes().envelope(who)
    assert envelope is not None
    notes = validation.check_task(task, DEFAULT_BACKEND_PARAMETERS, 1000, SETTINGS, envelope)
    doc = task.model_dump(mode="json", exclude_none=True)
    doc.update(id="0" * 26, state=State.QUEUED.value)
    return doc, notes


def job_labels(doc: dict[str, Any]) -> dict[str, str]:
    """The labels of the Job the worker builds for a stored task (worker settings: SETTINGS)."""
    return dict(jobspec.build_job(doc, SETTINGS)["metadata"]["labels"])


# -- matching ---------------------------------------------------------------------------------


def test_the_first_matching_route_wins() -> None:
    """By name or by group, in file order; others get the default."""
    table = routes()
    assert table.envelope(principal("alice")).queue == "team-a"  # type: ignore[union-attr]
    assert table.envelope(principal("x", "/team-a")).queue == "team-a"  # type: ignore[union-attr]
    assert table.envelope(principal("y", "team-b")).queue == "team-b"  # type: ignore[union-attr]
    default = table.envelope(principal("zoe", "team-c"))
    assert default is not None and default.route is None
    assert default.queue == "tes" and default.queues == ("tes", "tes-batch")
    assert default.priority_classes == ("tes-low",) and default.max_run_seconds == 86400


def test_omitted_fields_come_from_the_default_and_queues_from_the_route() -> None:
    """team-b names only a queue: it may ask for that queue alone; the rest is the default's."""
    team_b = routes().envelope(principal("y", "team-b"))
    assert team_b is not None
    assert team_b.queues == ("team-b",)
    assert team_b.priority_classes == ("tes-low",)
    assert team_b.max_run_seconds == 86400 and team_b.max_gpus == 4
    assert dict(team_b.gpu_kinds) == {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}


def test_no_routes_file_is_the_global_policy_for_everyone() -> None:
    """Unset KUEUE_TES_ROUTES_FILE: one envelope, the KUEUE_TES_* policy, and nothing added."""
    table = routing.load(SETTINGS)
    assert table.routes == ()
    assert table.envelope(principal("anyone")) == policy.Envelope.from_settings(SETTINGS)
    doc = TaskIn.model_validate({"executors": [{"image": "a", "command": ["true"]}]})
    assert validation.check_task(doc, DEFAULT_BACKEND_PARAMETERS, 1000, SETTINGS) == []
    assert doc.resources is None


def test_default_deny_leaves_unrouted_principals_without_an_envelope() -> None:
    """`default: deny`: only routed principals may create tasks."""
    table = routes("default: deny\nroutes: [{principals: [alice], queue: a}]\n")
    assert table.envelope(principal("bob")) is None
    assert table.envelope(principal("alice")) is not None


def test_json_works_too(tmp_path: Path) -> None:
    """The file may be JSON (YAML's subset), read from KUEUE_TES_ROUTES_FILE."""
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [{"groups": ["g"], "queue": "q-g"}]}))
    table = routing.load(SETTINGS.model_copy(update={"routes_file": path}))
    assert table.envelope(principal("p", "g")).queue == "q-g"  # type: ignore[union-attr]


# -- the Job ----------------------------------------------------------------------------------


def test_the_job_gets_the_routed_queue_and_cap() -> None:
    """A task that asks nothing: the route's queue and run-time cap reach the Job's labels."""
    doc, notes = created(principal("alice"))
    assert notes == []
    assert doc["resources"]["backend_parameters"] == {
        "queue": "team-a",
        "max_run_seconds": "172800",
    }
    labels = job_labels(doc)
    assert labels[QUEUE] == "team-a" and labels[MAX_EXEC] == "172800" and CLASS not in labels


def test_the_job_gets_what_the_envelope_allows() -> None:
    """Asked within the envelope: the queue, class, GPUs and run time are the Job's."""
    asked = {
        "queue": "team-a-gpu",
        "priority_class": "tes-high",
        "gpus": "2",
        "max_run_seconds": "3600",
    }
    doc, notes = created(principal("m", "/team-a"), asked)
    assert notes == []
    labels = job_labels(doc)
    assert labels[QUEUE] == "team-a-gpu"
    assert labels[CLASS] == "tes-high"  # not in the global allow-list: the route's own
    assert labels[MAX_EXEC] == "3600"
    pod = jobspec.build_job(doc, SETTINGS)["spec"]["template"]["spec"]
    executor = next(
        c for c in [*pod["initContainers"], *pod["containers"]] if c["name"] == "executor-0"
    )
    assert executor["resources"]["limits"]["nvidia.com/gpu"] == "2"


@pytest.mark.parametrize(
    ("who", "key", "value", "reason"),
    [
        (principal("alice"), "queue", "team-b", "choose one of: team-a, team-a-gpu"),
        (principal("alice"), "priority_class", "tes-low", "choose one of: tes-high, tes-normal"),
        (principal("alice"), "gpus", "3", "over the limit of 2"),
        (principal("alice"), "gpu_type", "amd", "choose one of: nvidia"),
        (principal("alice"), "max_run_seconds", "172801", "over the limit of 172800"),
        (principal("y", "team-b"), "queue", "team-a", "choose one of: team-b"),
        (principal("y", "team-b"), "queue", "tes", "choose one of: team-b"),
        (principal("zoe"), "priority_class", "tes-normal", "choose one of: tes-low"),
        (principal("zoe"), "max_run_seconds", "86401", "over the limit of 86400"),
    ],
)
def test_outside_the_envelope(who: Principal, key: str, value: str, reason: str) -> None:
    """Strict: a 400 naming the parameter. Otherwise dropped with a system log; the Job then
    gets the route's defaults."""
    with pytest.raises(validation.InvalidTask) as raised:
        created(who, {key: value}, strict=True)
    assert raised.value.field == f"resources.backend_parameters.{key}"
    assert reason in raised.value.message
    doc, notes = created(who, {key: value})
    assert notes == [f"backend parameter '{key}' was ignored: {notes[0].split(': ', 1)[1]}"]
    assert reason in notes[0]
    params = doc["resources"]["backend_parameters"]
    assert params.get(key) != value  # absent, or the route's own default in its place
    envelope = routes().envelope(who)
    assert envelope is not None
    assert job_labels(doc)[QUEUE] == envelope.queue


def test_a_route_that_offers_no_gpus_says_so() -> None:
    """gpu_types: [] gives the route no GPUs, and the message names the route."""
    table = routes("routes: [{principals: [p], queue: q, gpu_types: []}]\n")
    envelope = table.envelope(principal("p"))
    task = TaskIn.model_validate(
        {
            "executors": [{"image": "a", "command": ["true"]}],
            "resources": {"backend_parameters": {"gpus": "1"}, "backend_parameters_strict": True},
        }
    )
    with pytest.raises(validation.InvalidTask, match="offers no GPUs to the route of p"):
        policy.check(task, SETTINGS, DEFAULT_BACKEND_PARAMETERS, envelope)


def test_the_routed_queue_is_written_even_when_tasks_may_not_name_one() -> None:
    """KUEUE_TES_BACKEND_PARAMETERS without queue: tasks cannot choose, the route still does."""
    task = TaskIn.model_validate({"executors": [{"image": "a", "command": ["true"]}]})
    envelope = routes().envelope(principal("alice"))
    validation.check_task(task, ["gpus"], 1000, SETTINGS, envelope)
    assert task.resources is not None
    assert task.resources.backend_parameters == {"queue": "team-a", "max_run_seconds": "172800"}


# -- files that cannot work -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("routes: [{principals: [a], queue: a, priority_clases: [x]}]", "priority_clases"),
        ("routes: [{queue: a}]", "needs principals or groups"),
        ("routes: [{principals: [a], queue: Team_A}]", "'Team_A' is not a LocalQueue name"),
        ("routes: [{principals: [a], gpu_types: [tpu]}]", "'tpu' is not one of"),
        ("routes: [{principals: [a], max_run_seconds: 9999999}]", "bounds every route"),
        ("routes: [{principals: [a], max_gpus: -1}]", "max_gpus"),
        ("default: allow", "default"),
        ("default: {queue: x}\nroute: []", "route"),
        ("routes: [", "not YAML or JSON"),
    ],
)
def test_bad_files_are_refused_saying_where(text: str, message: str) -> None:
    """A typo never widens what anyone may do: the API refuses to start, naming the problem."""
    with pytest.raises(ValueError, match=message):
        routing.parse(text, SETTINGS)


def test_an_unreadable_file_names_the_setting(tmp_path: Path) -> None:
    """A missing file is an error naming KUEUE_TES_ROUTES_FILE."""
    missing = SETTINGS.model_copy(update={"routes_file": tmp_path / "nope.yaml"})
    with pytest.raises(ValueError, match="KUEUE_TES_ROUTES_FILE"):
        routing.load(missing)
