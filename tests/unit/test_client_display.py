"""The pure parts of `kueue-tes task`: addresses, credentials, tags, tables, progress, reasons."""

from __future__ import annotations

import httpx
import pytest

from app.client import connection, display
from app.client.connection import ClientError, api_base, credentials
from app.settings import Settings


@pytest.mark.parametrize(
    ("server", "base"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/ga4gh/tes/v1"),
        ("https://tes.example.org/", "https://tes.example.org/ga4gh/tes/v1"),
        ("https://example.org/tes", "https://example.org/tes/ga4gh/tes/v1"),
        ("http://h:1/ga4gh/tes/v1/", "http://h:1/ga4gh/tes/v1"),
        ("http://h:1/v1", "http://h:1/v1"),
    ],
)
def test_api_base_appends_the_tes_prefix_unless_given(server: str, base: str) -> None:
    """A bare address gets /ga4gh/tes/v1; a base URL ending in /v1 is kept."""
    assert api_base(server) == base


@pytest.mark.parametrize("server", ["localhost:8000", "ftp://h/", "http://", "http://h/?a=1"])
def test_api_base_refuses_what_is_not_an_http_address(server: str) -> None:
    """The message names --server and the value."""
    with pytest.raises(ClientError, match="--server"):
        api_base(server)


def test_credentials_from_the_environment() -> None:
    """None, Basic, Bearer; half or doubly set is an error that names the variable."""
    assert credentials({}) is None
    assert isinstance(
        credentials({"KUEUE_TES_USER": "a", "KUEUE_TES_PASSWORD": "b:c"}), httpx.BasicAuth
    )
    bearer = credentials({"KUEUE_TES_TOKEN": " t0k "})
    request = httpx.Request("GET", "http://h/")
    assert bearer is not None
    assert next(bearer.auth_flow(request)).headers["authorization"] == "Bearer t0k"
    with pytest.raises(ClientError, match="KUEUE_TES_USER is not set"):
        credentials({"KUEUE_TES_PASSWORD": "b"})
    with pytest.raises(ClientError, match="KUEUE_TES_TOKEN is set but empty"):
        credentials({"KUEUE_TES_TOKEN": " "})
    with pytest.raises(ClientError, match="not both"):
        credentials({"KUEUE_TES_TOKEN": "t", "KUEUE_TES_USER": "a"})


def test_tags_pair_keys_and_values_in_order() -> None:
    """`K=` and `K` mean "key present" (an empty tag_value, kept in its pair)."""
    pairs = [display.parse_tag(t) for t in ("a=1", "b=", "c", "d=x=y")]
    assert pairs == [("a", "1"), ("b", ""), ("c", ""), ("d", "x=y")]
    assert display.tag_params(pairs[:2]) == [
        ("tag_key", "a"),
        ("tag_value", "1"),
        ("tag_key", "b"),
        ("tag_value", ""),
    ]
    with pytest.raises(ValueError, match="no key"):
        display.parse_tag("=v")


def test_tasks_table_aligns_and_keeps_rows_on_one_line() -> None:
    """Names lose control characters and are cut at 40; times lose their fraction."""
    table = display.tasks_table(
        [
            {"id": "a1", "state": "QUEUED", "creation_time": "2025-01-02T03:04:05.678901Z"},
            {"id": "b2", "state": "EXECUTOR_ERROR", "name": "two\nlines", "creation_time": "x"},
            {"id": "c3", "state": "COMPLETE", "name": "n" * 50},
        ]
    )
    assert table.splitlines() == [
        "ID  STATE           NAME" + " " * 38 + "CREATED",
        "a1  QUEUED          -" + " " * 41 + "2025-01-02T03:04:05Z",
        "b2  EXECUTOR_ERROR  two lines" + " " * 33 + "x",
        "c3  COMPLETE        " + "n" * 39 + "…  -",
    ]


def test_progress_line_counts_finished_and_waiting_tasks() -> None:
    """Final states first, in a fixed order; then the others in the order tasks pass them."""
    states = {"a": "RUNNING", "b": "COMPLETE", "c": "QUEUED", "d": "EXECUTOR_ERROR", "e": "QUEUED"}
    assert display.progress_line(states, 12.4) == (
        "2 of 5 finished (1 COMPLETE, 1 EXECUTOR_ERROR); 2 QUEUED, 1 RUNNING; 12 s"
    )
    assert display.progress_line({"a": "QUEUED"}, 0) == "0 of 1 finished; 1 QUEUED; 0 s"


@pytest.mark.parametrize(
    ("states", "status"),
    [
        (["COMPLETE", "COMPLETE"], 0),
        (["COMPLETE", "EXECUTOR_ERROR"], 1),
        (["EXECUTOR_ERROR", "SYSTEM_ERROR"], 2),
        (["CANCELED"], 2),
        (["PREEMPTED", "COMPLETE"], 2),
    ],
)
def test_wait_status_is_the_worst_outcome(states: list[str], status: int) -> None:
    """0 all COMPLETE, 1 EXECUTOR_ERROR, 2 SYSTEM_ERROR, CANCELED (and PREEMPTED)."""
    assert display.wait_status(states) == status


def test_failure_reason_names_the_executor_or_the_last_system_log() -> None:
    """EXECUTOR_ERROR: the first executor that failed; otherwise the last system log line."""
    failed = {
        "id": "t1",
        "state": "EXECUTOR_ERROR",
        "logs": [{"logs": [{"exit_code": 0}, {"exit_code": 127}], "system_logs": ["x"]}],
    }
    assert display.failure_reason(failed) == (
        "executor 1 exited with 127; see: kueue-tes task logs t1 --executor 1 --stderr"
    )
    broken = {
        "id": "t2",
        "state": "SYSTEM_ERROR",
        "logs": [{"logs": [], "system_logs": ["queued", "input /x:\n  refused", ""]}],
    }
    assert display.failure_reason(broken) == "input /x: refused"
    assert display.failure_reason({"id": "t3", "state": "SYSTEM_ERROR"}) == (
        "see: kueue-tes task get t3"
    )


def test_the_clients_variables_are_no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """KUEUE_TES_SERVER/USER/PASSWORD/TOKEN belong to the client: no setting takes their names,
    and the servers' Settings read the environment with them set without complaint."""
    names = {
        connection.SERVER_VARIABLE,
        connection.USER_VARIABLE,
        connection.PASSWORD_VARIABLE,
        connection.TOKEN_VARIABLE,
    }
    fields = {f"KUEUE_TES_{name.upper()}" for name in Settings.model_fields}
    assert names.isdisjoint(fields)
    for name in names:
        monkeypatch.setenv(name, "meant for the client")
    with_them = Settings()
    for name in names:
        monkeypatch.delenv(name)
    assert with_them == Settings()
