"""policy: what a task may ask of Kueue, checked at create time and placed at submit time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app import policy, validation
from app.models import TaskIn
from app.settings import DEFAULT_BACKEND_PARAMETERS, Settings

BASE = Settings(data_dir=Path("/nonexistent"), mongo_uri=None, redis_url=None)
POLICY = BASE.model_copy(
    update={
        "allowed_queues": ["team-a", "team-b"],
        "allowed_priority_classes": ["low", "high"],
        "gpu_resources": ["nvidia=nvidia.com/gpu", "amd=amd.com/gpu"],
        "max_gpus": 4,
        "max_run_seconds": 3600,
    }
)


def _task(strict: bool = False, **resources: Any) -> TaskIn:
    if strict:
        resources["backend_parameters_strict"] = True
    return TaskIn.model_validate(
        {"executors": [{"image": "alpine", "command": ["true"]}], "resources": resources}
    )


def _check(params: dict[str, str], settings: Settings = POLICY) -> tuple[dict[str, str], list[str]]:
    return policy.check(_task(backend_parameters=params), settings, DEFAULT_BACKEND_PARAMETERS)


def test_within_policy_is_kept_and_normalised() -> None:
    """Requests within the policy pass unchanged, numbers in their plain form, in order."""
    params = {
        "queue": "team-a",
        "priority_class": "high",
        "gpus": "04",
        "gpu_type": "amd",
        "max_run_seconds": "3600",
    }
    kept, notes = _check(params)
    assert kept == dict(params, gpus="4") and list(kept) == list(params)
    assert notes == []


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("queue", "team-c", "choose one of: team-a, team-b"),
        ("queue", "Team_A", "not a LocalQueue name"),
        ("queue", "q" * 64, "at most 63"),
        ("priority_class", "urgent", "choose one of: high, low"),
        ("priority_class", "", "not a WorkloadPriorityClass name"),
        ("gpus", "5", "over the limit of 4"),
        ("gpus", "-1", "not a whole number"),
        ("gpus", "1.5", "not a whole number"),
        ("gpu_type", "tpu", "choose one of: amd, nvidia"),
        ("max_run_seconds", "0", "not a positive whole number"),
        ("max_run_seconds", "1h", "not a positive whole number"),
        ("max_run_seconds", "3601", "over the limit of 3600"),
    ],
)
def test_outside_policy_is_dropped_or_refused(key: str, value: str, reason: str) -> None:
    """Outside the policy: dropped with a system log, or a 400 naming it when strict."""
    kept, notes = _check({key: value, "queue": "team-b"} if key != "queue" else {key: value})
    assert key not in kept
    assert len(notes) == 1 and f"'{key}' was ignored" in notes[0] and reason in notes[0]
    strict = _task(strict=True, backend_parameters={key: value})
    with pytest.raises(policy.InvalidTask) as info:
        policy.check(strict, POLICY, DEFAULT_BACKEND_PARAMETERS)
    assert info.value.field == f"resources.backend_parameters.{key}"
    assert reason in info.value.message


def test_open_policy_allows_any_well_formed_name() -> None:
    """Empty allow-lists accept any valid name; the default GPU limit is 8."""
    kept, notes = _check({"queue": "anything.at-all", "priority_class": "x", "gpus": "8"}, BASE)
    assert kept == {"queue": "anything.at-all", "priority_class": "x", "gpus": "8"}
    assert notes == []


def test_gpus_need_a_kind_on_offer() -> None:
    """No GPU kinds means no GPUs; a default kind that is not offered needs gpu_type."""
    none = BASE.model_copy(update={"gpu_resources": []})
    assert "offers no GPUs" in _check({"gpus": "1"}, none)[1][0]
    assert _check({"gpus": "0"}, none) == ({"gpus": "0"}, [])
    odd = BASE.model_copy(update={"default_gpu_type": "tpu"})
    assert "give gpu_type" in _check({"gpus": "1"}, odd)[1][0]
    assert _check({"gpus": "1", "gpu_type": "nvidia"}, odd)[1] == []


def test_unknown_keys_still_follow_the_honoured_list() -> None:
    """Keys the operator does not honour are dropped (or 400 when strict) before policy."""
    task = _task(backend_parameters={"queue": "team-a", "flavour": "x"})
    kept, notes = policy.check(task, POLICY, ["queue"])
    assert kept == {"queue": "team-a"} and "'flavour'" in notes[0]
    strict = _task(strict=True, backend_parameters={"gpus": "1"})
    with pytest.raises(policy.InvalidTask, match="does not honour"):
        policy.check(strict, POLICY, ["queue"])


def test_hints_that_cannot_be_honoured_are_noted() -> None:
    """preemptible without configured capacity and invalid zones leave a system log."""
    _, notes = policy.check(_task(preemptible=True, zones=["eu-1a", "a b"]), BASE, [])
    assert any("preemptible was ignored" in n for n in notes)
    assert any("zone 'a b' was ignored" in n for n in notes)
    spot = BASE.model_copy(update={"preemptible_priority_class": "spot"})
    assert policy.check(_task(preemptible=True, zones=["eu-1a"]), spot, []) == ({}, [])


def test_check_task_applies_the_policy() -> None:
    """validation.check_task stores the kept parameters and returns the notes."""
    task = _task(backend_parameters={"queue": "team-z", "gpus": "2"})
    notes = validation.check_task(task, DEFAULT_BACKEND_PARAMETERS, 1000, POLICY)
    assert task.resources is not None and task.resources.backend_parameters == {"gpus": "2"}
    assert len(notes) == 1 and "team-z" in notes[0]
    defaults = _task(backend_parameters={"gpus": "9"})
    assert "over the limit of 8" in validation.check_task(defaults, ["gpus"], 1000)[0]
    assert validation.InvalidTask is policy.InvalidTask


def test_placement_of_a_stored_task() -> None:
    """placement: defaults, the cap, the GPU kind, preemptible class and selector, zones."""
    settings = POLICY.model_copy(
        update={"preemptible_priority_class": "low", "preemptible_node_selector": ["spot=yes"]}
    )
    assert policy.placement(None, settings) == policy.Placement(
        queue=settings.default_queue, max_run_seconds=3600
    )
    stored = {
        "preemptible": True,
        "zones": ["z1", "z1", "bad zone", "z2"],
        "backend_parameters": {"queue": "team-a", "gpus": "2", "max_run_seconds": "60"},
    }
    assert policy.placement(stored, settings) == policy.Placement(
        queue="team-a",
        priority_class="low",
        gpus=2,
        gpu_resource="nvidia.com/gpu",
        max_run_seconds=60,
        node_selector={"spot": "yes"},
        zones=["z1", "z2"],
    )
    with pytest.raises(ValueError, match="whole number"):
        policy.placement({"backend_parameters": {"gpus": "many"}}, settings)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's list settings read comma-separated KUEUE_TES_* values; pairs are checked."""
    monkeypatch.setenv("KUEUE_TES_GPU_RESOURCES", "nvidia=nvidia.com/gpu, amd=amd.com/gpu")
    monkeypatch.setenv("KUEUE_TES_ALLOWED_QUEUES", "a,b")
    monkeypatch.setenv("KUEUE_TES_PREEMPTIBLE_NODE_SELECTOR", "cloud.google.com/gke-spot=true")
    settings = Settings()
    assert policy.gpu_kinds(settings) == {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}
    assert policy.default_gpu_type(settings) == "nvidia"
    assert settings.allowed_queues == ["a", "b"]
    assert policy.pairs(settings.preemptible_node_selector) == {"cloud.google.com/gke-spot": "true"}
    monkeypatch.setenv("KUEUE_TES_GPU_RESOURCES", "nvidia")
    with pytest.raises(ValidationError, match="key=value"):
        Settings()


SPOT = BASE.model_copy(
    update={
        "allowed_queues": ["team-a", "tes-spot"],
        "preemptible_queue": "tes-spot",
        "preemptible_priority_class": "tes-low",
        "preemptible_node_selector": ["node.kubernetes.io/lifecycle=spot"],
    }
)


def test_preemptible_tasks_go_to_the_preemptible_queue() -> None:
    """KUEUE_TES_PREEMPTIBLE_QUEUE takes every preemptible task; a named queue is dropped."""
    assert policy.check(_task(preemptible=True), SPOT, DEFAULT_BACKEND_PARAMETERS) == ({}, [])
    assert policy.placement({"preemptible": True}, SPOT).queue == "tes-spot"
    named = _task(preemptible=True, backend_parameters={"queue": "team-a"})
    kept, notes = policy.check(named, SPOT, DEFAULT_BACKEND_PARAMETERS)
    assert kept == {} and notes == [
        "backend parameter 'queue' was ignored: preemptible tasks run in LocalQueue tes-spot"
    ]
    # Even a stored task that kept another queue (stored before the setting) goes there.
    stored = {"preemptible": True, "backend_parameters": {"queue": "team-a"}}
    assert policy.placement(stored, SPOT).queue == "tes-spot"
    assert policy.placement({"backend_parameters": {"queue": "team-a"}}, SPOT).queue == "team-a"
    same = _task(preemptible=True, backend_parameters={"queue": "tes-spot"})
    assert policy.check(same, SPOT, DEFAULT_BACKEND_PARAMETERS) == ({"queue": "tes-spot"}, [])
    strict = _task(strict=True, preemptible=True, backend_parameters={"queue": "team-a"})
    with pytest.raises(policy.InvalidTask) as caught:
        policy.check(strict, SPOT, DEFAULT_BACKEND_PARAMETERS)
    assert caught.value.field == "resources.backend_parameters.queue"
    assert "preemptible tasks run in LocalQueue tes-spot" in caught.value.message


def test_a_routes_queue_does_not_take_preemptible_tasks() -> None:
    """A team's route sends its tasks to its queue, its preemptible ones to the spot queue."""
    team = policy.Envelope(queue="team-a", queues=("team-a",))
    kept, _ = policy.check(_task(preemptible=True), SPOT, DEFAULT_BACKEND_PARAMETERS, team)
    assert kept == {}
    kept, _ = policy.check(_task(), SPOT, DEFAULT_BACKEND_PARAMETERS, team)
    assert kept == {"queue": "team-a"}


def test_a_preemptible_queue_alone_is_preemptible_capacity() -> None:
    """The queue is enough configuration for preemptible not to be ignored."""
    alone = BASE.model_copy(update={"preemptible_queue": "tes-spot"})
    assert policy.check(_task(preemptible=True), alone, []) == ({}, [])
