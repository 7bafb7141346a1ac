"""The three TES views of a stored task (pure functions on the stored doc)."""

from __future__ import annotations

from typing import Any

from app.models import Task, View


def _basic(full: dict[str, Any]) -> dict[str, Any]:
    # BASIC is FULL without the bulky fields: executor stdout/stderr, input content and
    # system logs (the spec's own list).
    for item in full.get("inputs", ()):
        item.pop("content", None)
    for tasklog in full.get("logs", ()):
        tasklog.pop("system_logs", None)
        for executor_log in tasklog.get("logs", ()):
            executor_log.pop("stdout", None)
            executor_log.pop("stderr", None)
    return full


def render(doc: dict[str, Any], view: View) -> dict[str, Any]:
    """Return the task JSON for ``view``, with exactly the spec's fields."""
    if view is View.MINIMAL:
        return {"id": doc["id"], "state": doc["state"]}
    full = Task.model_validate(doc).model_dump(mode="json", exclude_none=True)
    if not full.get("logs"):
        # `logs` appears once an attempt has started, never as [] (design section 4).
        full.pop("logs", None)
    return _basic(full) if view is View.BASIC else full
