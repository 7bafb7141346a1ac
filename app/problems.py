"""problem+json answers (RFC 9457) that name what the client must change."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from connexion.problem import problem as _problem

from app.validation import InvalidTask


def problem(status: int, title: str, detail: str, **ext: Any) -> ConnexionResponse:
    """Return a problem+json response."""
    return _problem(status, title, detail, ext=ext or None)


def bad_request(error: InvalidTask) -> ConnexionResponse:
    """Return the 400 for an invalid task, naming the field."""
    return problem(400, "Bad Request", str(error), field=error.field)


def not_found(task_id: str) -> ConnexionResponse:
    """Return the 404 for an unknown task id."""
    return problem(404, "Not Found", f"no task with id '{task_id}'")


def store_unavailable() -> ConnexionResponse:
    """Return the 503 for a store that cannot answer now."""
    return problem(503, "Service Unavailable", "the task store is unavailable; retry shortly")
