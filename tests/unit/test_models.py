"""Pure pieces of the API: ids, models, validation, views, settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app import ids, validation, views
from app.models import State, TaskIn, View
from app.settings import Settings
from app.store.base import ALLOWED_FROM, TERMINAL, allowed_from


def test_ids_are_time_ordered_unique_and_lowercase() -> None:
    """Ids sort in creation order, even within one millisecond, and fit a k8s name."""
    made = [ids.new_id() for _ in range(5000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(ids.is_valid(i) and i == i.lower() and len(i) == 26 for i in made)
    assert not ids.is_valid("service-info") and not ids.is_valid("A" * 26)


def _task(**extra: Any) -> TaskIn:
    body: dict[str, Any] = {"executors": [{"image": "a", "command": ["true"]}]}
    body.update(extra)
    return TaskIn.model_validate(body)


def test_fractional_cores_round_up_and_nulls_drop() -> None:
    """cpu_cores 0.5 becomes 1; null tags and backend parameters vanish."""
    task = _task(
        resources={"cpu_cores": 0.5, "backend_parameters": {"a": None, "queue": "q"}},
        tags={"x": None, "y": "1"},
    )
    assert task.resources is not None and task.resources.cpu_cores == 1
    assert task.resources.backend_parameters == {"queue": "q"}
    assert task.tags == {"y": "1"}


def test_pydantic_errors_name_the_field() -> None:
    """The first Pydantic error becomes 'executors[0].command: ...'."""
    with pytest.raises(ValidationError) as info:
        TaskIn.model_validate({"executors": [{"image": "a"}]})
    error = validation.from_pydantic(info.value)
    assert error.field == "executors[0].command"
    assert str(error).startswith("executors[0].command: ")


@pytest.mark.parametrize(
    "path", ["/", "//", "/proc", "/proc/1", "/dev/x", "/sys", "/tes", "/tes/x", "rel", "/a/../b"]
)
def test_forbidden_and_relative_paths(path: str) -> None:
    """Paths that shadow the container's own mounts, relative ones and '..' are refused."""
    with pytest.raises(validation.InvalidTask):
        validation.check_path("f", path)


@pytest.mark.parametrize("path", ["/data", "/tmp/x", "/processed", "/devices/a", "/testing"])
def test_ordinary_paths_pass(path: str) -> None:
    """Neighbours of the forbidden roots are fine."""
    validation.check_path("f", path)


def test_backend_parameters_dropped_or_strict() -> None:
    """Unknown keys are dropped with a note, or refused when strict."""
    task = _task(resources={"backend_parameters": {"queue": "q", "zz": "1"}})
    notes = validation.check_task(task, ["queue"], 1000)
    assert task.resources is not None and task.resources.backend_parameters == {"queue": "q"}
    assert len(notes) == 1 and "'zz'" in notes[0]
    strict = _task(resources={"backend_parameters": {"zz": "1"}, "backend_parameters_strict": True})
    with pytest.raises(validation.InvalidTask) as info:
        validation.check_task(strict, ["queue"], 1000)
    assert info.value.field == "resources.backend_parameters.zz"


def test_views_shape() -> None:
    """MINIMAL is id and state; BASIC drops the bulky fields; unknown keys never leak."""
    doc = {
        "id": "x",
        "state": "COMPLETE",
        "owner": "secret",
        "executors": [{"image": "a", "command": ["true"]}],
        "inputs": [{"path": "/a", "content": "c", "type": "FILE"}],
        "logs": [{"logs": [{"exit_code": 0, "stdout": "o"}], "outputs": [], "system_logs": ["s"]}],
    }
    assert views.render(doc, View.MINIMAL) == {"id": "x", "state": "COMPLETE"}
    basic = views.render(doc, View.BASIC)
    full = views.render(doc, View.FULL)
    assert "owner" not in basic and "owner" not in full
    assert "content" not in basic["inputs"][0] and full["inputs"][0]["content"] == "c"
    assert basic["logs"][0] == {"logs": [{"exit_code": 0}], "outputs": []}
    assert full["logs"][0]["system_logs"] == ["s"]
    assert "logs" not in views.render(dict(doc, logs=[]), View.FULL)


def test_transition_table_keeps_terminal_states() -> None:
    """No transition leaves a terminal state; CANCELING only ends in CANCELED."""
    for target, sources in ALLOWED_FROM.items():
        assert not sources & TERMINAL, target
        if State.CANCELING in sources:
            assert target is State.CANCELED
    assert allowed_from(State.RUNNING, [State.QUEUED]) == {State.QUEUED}
    assert allowed_from(State.PAUSED) == frozenset()


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """KUEUE_TES_* variables set the fields; lists are comma-separated."""
    monkeypatch.setenv("KUEUE_TES_STORAGE", "s3://a/, file:///b/")
    monkeypatch.setenv("KUEUE_TES_PORT", "9000")
    settings = Settings()
    assert settings.storage == ["s3://a/", "file:///b/"] and settings.port == 9000
    assert all(info.description for info in Settings.model_fields.values())
