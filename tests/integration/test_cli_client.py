"""`kueue-tes task`, the real console script, against a real `kueue-tes serve`: every command
and every exit status of `task wait`."""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import free_port
from tests.integration.cli_support import (
    BIG,
    ECHO,
    FAIL,
    ID,
    KUEUE_TES,
    SLEEP,
    address,
    background_wait,
    cli,
    client_env,
    create,
    failed,
    ok,
    state_lines,
)
from tests.integration.e2e_support import Server, serve_env, serving

ORDER = ["QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One open `kueue-tes serve` (no auth) for the module, roomy enough to run tasks at once."""
    env = serve_env(
        {
            "KUEUE_TES_LOCAL_CPU": "8",
            "KUEUE_TES_TRANSFER_RETRIES": "1",
            "KUEUE_TES_TRANSFER_BACKOFF_SECONDS": "0.05",
        }
    )
    with serving(tmp_path_factory.mktemp("cli") / "data", env) as running:
        yield running


def _table(stdout: str) -> list[list[str]]:
    """Parse `task list`'s table: the header, then one row of four cells per task."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "NAME", "CREATED"], stdout
    rows = [line.split() for line in lines[1:]]
    for row in rows:
        assert len(row) == 4 and ID.match(row[0]), row
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", row[3]), row
    return rows


def test_create_wait_get_and_logs_of_a_task_that_completes(server: Server, tmp_path: Path) -> None:
    """create prints the id; wait shows states in order and exits 0; get and logs tell all."""
    url = address(server)
    task_id = create(url, ECHO, tmp_path)
    waited = cli("wait", task_id, server=url)
    assert waited.returncode == 0, waited.stderr
    states = [state for seen_id, state in state_lines(waited.stdout) if seen_id == task_id]
    assert states[-1] == "COMPLETE" and states == sorted(states, key=ORDER.index), states
    assert waited.stderr.splitlines()[-1].startswith("1 of 1 finished (1 COMPLETE); ")

    assert json.loads(ok(cli("get", task_id, server=url))) == server.get(task_id, "FULL")
    basic = json.loads(ok(cli("get", task_id, "--view", "basic", server=url)))
    assert basic == server.get(task_id, "BASIC")
    minimal = json.loads(ok(cli("get", task_id, "--view", "MINIMAL", server=url)))
    assert minimal == {"id": task_id, "state": "COMPLETE"}

    assert ok(cli("logs", task_id, server=url)) == "one\ntwo\n"
    assert ok(cli("logs", task_id, "--executor", "1", server=url)) == "two\n"
    assert ok(cli("logs", task_id, "--stderr", server=url)) == "oops\n"
    assert ok(cli("logs", task_id, "--executor", "0", "--stderr", server=url)) == "oops\n"
    line = failed(cli("logs", task_id, "--executor", "2", server=url), "logs")
    assert "no log of executor 2" in line and "only of executor 0 to 1" in line


def test_the_server_from_env_group_option_command_option_or_a_base_url(
    server: Server, tmp_path: Path
) -> None:
    """`--server` after the command wins over the group's, which wins over KUEUE_TES_SERVER;
    a TES base URL (…/ga4gh/tes/v1 or …/v1) works as well as the bare address."""
    url, nowhere = address(server), f"http://127.0.0.1:{free_port()}"
    task_id = ok(cli("create", "-", server=server.base, stdin=json.dumps(ECHO))).strip()
    assert ID.match(task_id)
    assert ok(cli("get", task_id, "--view", "MINIMAL", "--server", url + "/v1", server=nowhere))
    assert ok(cli("--server", url, "get", task_id, "--view", "MINIMAL", server=nowhere))
    overridden = cli("--server", nowhere, "get", task_id, "--server", url, server=None)
    assert json.loads(ok(overridden))["id"] == task_id
    failed(cli("get", task_id, server=nowhere), "get")
    assert cli("wait", task_id, "--server", url, server=None).returncode == 0


def test_list_filters_pages_json_and_cancel(server: Server, tmp_path: Path) -> None:
    """Tags (AND, `K=` and `K` for key present), name prefix and state filter like the API;
    --all follows next_page_token; --json is the API's JSON; cancel takes several ids."""
    url, run = address(server), uuid.uuid4().hex
    tasks = [
        dict(BIG, name="cli-list-a1", tags={"run": run, "kind": "a"}),
        dict(BIG, name="cli-list-a2", tags={"run": run, "kind": "a"}),
        dict(BIG, name="cli-list-b", tags={"run": run, "kind": "b", "flag": "yes"}),
    ]
    ids = [create(url, task, tmp_path) for task in tasks]
    newest_first = ids[::-1]

    def listed(*args: str) -> list[str]:
        return [row[0] for row in _table(ok(cli("list", "--tag", f"run={run}", *args, server=url)))]

    rows = _table(ok(cli("list", "--tag", f"run={run}", server=url)))
    assert [row[0] for row in rows] == newest_first
    assert [row[1] for row in rows] == ["QUEUED"] * 3
    assert [row[2] for row in rows] == ["cli-list-b", "cli-list-a2", "cli-list-a1"]
    assert listed("--tag", "kind=a") == newest_first[1:]
    assert listed("--tag", "flag=") == listed("--tag", "flag") == [ids[2]]
    assert listed("--tag", "kind=a", "--tag", "flag=") == []
    assert listed("--name-prefix", "cli-list-a") == newest_first[1:]
    assert listed("--state", "queued") == newest_first

    as_json = json.loads(ok(cli("list", "--tag", f"run={run}", "--json", server=url)))
    status, direct = server.call(
        "GET", "/tasks?" + urlencode({"tag_key": "run", "tag_value": run, "view": "BASIC"})
    )
    assert status == 200 and as_json == direct

    one = cli("list", "--tag", f"run={run}", "--page-size", "1", server=url)
    assert [row[0] for row in _table(one.stdout)] == [ids[2]]
    assert one.returncode == 0 and one.stderr.startswith("more tasks follow: add --all")
    assert listed("--page-size", "1", "--all") == newest_first
    page = json.loads(
        ok(cli("list", "--tag", f"run={run}", "--page-size", "1", "--json", server=url))
    )
    token = page["next_page_token"]
    after = cli(
        "list",
        "--tag",
        f"run={run}",
        "--page-size",
        "1",
        "--page-token",
        token,
        "--json",
        server=url,
    )
    assert [t["id"] for t in json.loads(ok(after))["tasks"]] == [ids[1]]
    every = json.loads(
        ok(cli("list", "--tag", f"run={run}", "--page-size", "1", "--all", "--json", server=url))
    )
    assert [t["id"] for t in every["tasks"]] == newest_first and "next_page_token" not in every
    minimal = json.loads(
        ok(cli("list", "--tag", f"run={run}", "--view", "minimal", "--json", server=url))
    )
    assert minimal == {"tasks": [{"id": i, "state": "QUEUED"} for i in newest_first]}

    assert ok(cli("cancel", *ids, server=url)).split() == ids
    assert cli("wait", *ids, server=url).returncode == 2
    assert listed("--state", "CANCELED") == newest_first
    assert listed("--state", "QUEUED") == []


def test_wait_exits_1_on_executor_error_and_says_where_to_look(
    server: Server, tmp_path: Path
) -> None:
    """One COMPLETE and one EXECUTOR_ERROR: exit 1, and a line naming the failed executor."""
    url = address(server)
    good, bad = create(url, ECHO, tmp_path), create(url, FAIL, tmp_path)
    waited = cli("wait", good, bad, server=url)
    assert waited.returncode == 1, waited.stderr
    final = {task_id: state for task_id, state in state_lines(waited.stdout)}
    assert final == {good: "COMPLETE", bad: "EXECUTOR_ERROR"}
    assert (
        f"{bad} EXECUTOR_ERROR: executor 0 exited with 3; "
        f"see: kueue-tes task logs {bad} --executor 0 --stderr"
    ) in waited.stderr.splitlines()
    assert "2 of 2 finished (1 COMPLETE, 1 EXECUTOR_ERROR)" in waited.stderr
    assert ok(cli("logs", bad, "--stderr", server=url)) == "broken\n"
    assert ok(cli("logs", bad, server=url)) == "partial\n"


def test_wait_exits_2_on_system_error_with_its_reason(server: Server, tmp_path: Path) -> None:
    """An input from an unreachable URL ends in SYSTEM_ERROR: exit 2 (worse than the
    EXECUTOR_ERROR beside it), the system log's reason on stderr; logs says there are none."""
    url, source = address(server), f"http://127.0.0.1:{free_port()}/missing.txt"
    broken = dict(ECHO, inputs=[{"url": source, "path": "/data/in.txt"}])
    lost, bad = create(url, broken, tmp_path), create(url, FAIL, tmp_path)
    waited = cli("wait", lost, bad, server=url)
    assert waited.returncode == 2, waited.stderr
    reasons = [line for line in waited.stderr.splitlines() if line.startswith(f"{lost} ")]
    assert len(reasons) == 1 and reasons[0].startswith(f"{lost} SYSTEM_ERROR: ")
    assert source in reasons[0]
    line = failed(cli("logs", lost, server=url), "logs")
    assert f"task {lost} ended SYSTEM_ERROR with no executor logs" in line


def test_wait_exits_2_when_a_task_is_canceled_meanwhile(server: Server, tmp_path: Path) -> None:
    """wait follows a running task; `task cancel` prints its id; wait sees CANCELED, exits 2."""
    url = address(server)
    task_id = create(url, SLEEP, tmp_path)
    waiting = background_wait(url, task_id)
    try:
        deadline = time.monotonic() + 60
        while server.get(task_id, "MINIMAL")["state"] != "RUNNING":
            assert time.monotonic() < deadline, server.lines_about(task_id)
            time.sleep(0.1)
        assert ok(cli("cancel", task_id, server=url)) == task_id + "\n"
        out, err = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 2, err
    states = [state for _, state in state_lines(out)]
    assert "RUNNING" in states and states[-1] == "CANCELED", out
    assert err.splitlines()[-1].startswith("1 of 1 finished (1 CANCELED); ")
    assert "Traceback" not in err
    # Canceling a final task again changes nothing and is not an error.
    assert ok(cli("cancel", task_id, server=url)) == task_id + "\n"


def test_wait_for_many_tasks_at_once(server: Server, tmp_path: Path) -> None:
    """Ten tasks (one named twice): one line per state change each, one final count."""
    url = address(server)
    quick = {"name": "cli-many", "executors": [{"image": "alpine", "command": ["true"]}]}
    ids = [create(url, quick, tmp_path) for _ in range(10)]
    waited = cli("wait", *ids, ids[0], server=url)
    assert waited.returncode == 0, waited.stderr
    pairs = state_lines(waited.stdout)
    assert sorted(i for i, state in pairs if state == "COMPLETE") == sorted(ids)
    for task_id in ids:  # a state is printed when it changes, never twice in a row
        states = [state for seen, state in pairs if seen == task_id]
        assert all(a != b for a, b in itertools.pairwise(states)), states
    assert waited.stderr.splitlines()[-1].startswith("10 of 10 finished (10 COMPLETE); ")


def test_a_queued_task_has_no_logs_yet_and_wait_can_give_up(server: Server, tmp_path: Path) -> None:
    """A task Kueue keeps QUEUED: logs says so; wait --timeout gives up with exit status 3."""
    url = address(server)
    task_id = create(url, BIG, tmp_path)
    line = failed(cli("logs", task_id, server=url), "logs")
    assert line.endswith(f"task {task_id} has no executor logs yet (state QUEUED)")
    waited = cli("wait", task_id, "--timeout", "0.5", server=url)
    assert waited.returncode == 3 and "Traceback" not in waited.stderr
    assert state_lines(waited.stdout) == [(task_id, "QUEUED")]
    assert waited.stderr.splitlines()[-1] == (
        f"kueue-tes task wait: gave up after 0.5 s (--timeout): 1 of 1 tasks not finished: "
        f"{task_id}"
    )
    ok(cli("cancel", task_id, server=url))


def test_progress_is_rewritten_in_place_on_a_terminal(server: Server, tmp_path: Path) -> None:
    """With stderr on a terminal, the progress line is redrawn (carriage return, erase)."""
    url = address(server)
    task_id = create(url, ECHO, tmp_path)
    assert cli("wait", task_id, server=url).returncode == 0
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [str(KUEUE_TES), "task", "wait", task_id],
            env=client_env(url),
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            timeout=120,
            check=False,
        )
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0
    assert b"\r\x1b[K1 of 1 finished (1 COMPLETE); " in seen, seen


def test_output_into_a_closed_pipe_ends_quietly(server: Server) -> None:
    """`task list | head` style: the reader is gone; no traceback, no message."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        proc = subprocess.run(
            [str(KUEUE_TES), "task", "list"],
            env=client_env(address(server)),
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert proc.returncode != 0 and proc.stderr == "", proc.stderr
