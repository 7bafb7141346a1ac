"""The operation label: the spec's route templates under both base paths, and nothing else."""

from __future__ import annotations

import pytest

from app.main import BASE_PATHS, SPEC_DIR, SPEC_FILE
from app.meter import DASHBOARD, OTHER, Operations

OPERATIONS = Operations.from_spec(SPEC_DIR / SPEC_FILE, BASE_PATHS)


@pytest.mark.parametrize("base", BASE_PATHS)
@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/service-info", "GetServiceInfo"),
        ("GET", "/tasks", "ListTasks"),
        ("POST", "/tasks", "CreateTask"),
        ("GET", "/tasks/01hzzzzzzzzzzzzzzzzzzzzzzz", "GetTask"),
        ("POST", "/tasks/01hzzzzzzzzzzzzzzzzzzzzzzz:cancel", "CancelTask"),
        ("POST", "/tasks/01hzzzzzzzzzzzzzzzzzzzzzzz", OTHER),
        ("DELETE", "/tasks", OTHER),
        ("GET", "/tasks/a/b", OTHER),
        ("GET", "/openapi.json", OTHER),
    ],
)
def test_operations_of_the_spec(base: str, method: str, path: str, operation: str) -> None:
    assert OPERATIONS.name(method, base + path) == operation


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/v1/tasks/service-info", "GetServiceInfo"),  # py-tes 0.4
        ("GET", "/dashboard/", DASHBOARD),
        ("POST", "/dashboard/tasks/x/cancel", DASHBOARD),
        ("GET", "/", OTHER),
        ("GET", "/ga4gh/tes/v2/tasks", OTHER),
        ("GET", "/wp-login.php", OTHER),
    ],
)
def test_every_other_path_has_a_bounded_name(method: str, path: str, operation: str) -> None:
    assert OPERATIONS.name(method, path) == operation
