"""The `kueue-tes task` commands: create, get, list, wait, cancel, logs (see docs/cli.md)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from app.client import display, waiter
from app.client.connection import DEFAULT_SERVER, SERVER_VARIABLE, ClientError, Connection

#: Exit status when a command could not do what it was asked (usage, server, answer).
ERROR = 3
PROG = "kueue-tes task"
MAX_PAGE_SIZE = 2047
_VIEWS = click.Choice(["MINIMAL", "BASIC", "FULL"], case_sensitive=False)
_STATES = click.Choice(display.STATES, case_sensitive=False)

F = TypeVar("F", bound=Callable[..., Any])


def run(args: list[str]) -> int:
    """Run `kueue-tes task ARGS`; return the exit status. Nothing ends in a traceback.

    (click itself ends a command whose reader went away, `task list | head`, quietly.)
    """
    try:
        result = task.main(args, prog_name=PROG, standalone_mode=False)
    except click.ClickException as exc:  # usage errors: click's message and usage hint
        exc.show()
        return ERROR
    except (click.Abort, KeyboardInterrupt):
        print(file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback
        print(f"{PROG}: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ERROR
    return result if isinstance(result, int) else 0


def _reported(name: str) -> Callable[[F], F]:
    """Turn a ClientError raised by a command into one line on stderr and exit status 3."""

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def command(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except ClientError as exc:
                print(f"{PROG} {name}: {exc}", file=sys.stderr, flush=True)
                return ERROR

        return cast(F, command)

    return wrap


def _server_option(function: F) -> F:
    """Let a subcommand take --server too (it wins over the group's)."""
    return click.option(
        "--server",
        "server",
        metavar="URL",
        default=None,
        help=f"The TES server (default: the group's --server, ${SERVER_VARIABLE}, "
        f"{DEFAULT_SERVER}).",
    )(function)


def _connect(server: str | None) -> Connection:
    group_server = click.get_current_context().find_root().params.get("server")
    return Connection(server or group_server or DEFAULT_SERVER)


@click.group(
    name="task",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--server",
    metavar="URL",
    envvar=SERVER_VARIABLE,
    default=DEFAULT_SERVER,
    show_default=True,
    help=f"The TES server: its address, or its TES base URL (…/ga4gh/tes/v1). "
    f"Also ${SERVER_VARIABLE}.",
)
def task(server: str) -> None:
    """Create, inspect, wait for and cancel TES tasks on a TES server.

    Credentials come from the environment: KUEUE_TES_USER and KUEUE_TES_PASSWORD (Basic), or
    KUEUE_TES_TOKEN (Bearer). Errors are one line on stderr with exit status 3; `task wait`
    exits 0 when all tasks COMPLETE, 1 on EXECUTOR_ERROR, 2 on SYSTEM_ERROR or CANCELED.
    """


@task.command()
@click.argument("file", metavar="FILE|-")
@_server_option
@_reported("create")
def create(file: str, server: str | None) -> int:
    """Create a task from a JSON file (or - for stdin); print its id."""
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {file}: {exc.strerror or exc}") from exc
    where = "stdin" if file == "-" else file
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClientError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise ClientError(f"{where}: a task must be a JSON object, not {type(body).__name__}")
    with _connect(server) as connection:
        click.echo(connection.create_task(body))
    return 0


@task.command()
@click.argument("task_id", metavar="ID")
@click.option(
    "--view",
    type=_VIEWS,
    default="FULL",
    show_default=True,
    metavar="VIEW",
    help="MINIMAL, BASIC or FULL.",
)
@_server_option
@_reported("get")
def get(task_id: str, view: str, server: str | None) -> int:
    """Print one task as JSON."""
    with _connect(server) as connection:
        click.echo(json.dumps(connection.get_task(task_id, view.upper()), indent=2))
    return 0


@task.command(name="list")
@click.option(
    "--state",
    type=_STATES,
    metavar="STATE",
    help="Only tasks in this state: QUEUED, RUNNING, COMPLETE, EXECUTOR_ERROR, ...",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="K=V",
    callback=lambda _ctx, _param, values: _tags(values),
    help="Only tasks with tag K set to V; K= for any value. Repeat to require several.",
)
@click.option("--name-prefix", metavar="P", help="Only tasks whose name starts with P.")
@click.option("--all", "every", is_flag=True, help="Follow next_page_token to the last page.")
@click.option("--json", "as_json", is_flag=True, help="Print the TES JSON instead of a table.")
@click.option(
    "--view",
    type=_VIEWS,
    default="BASIC",
    show_default=True,
    metavar="VIEW",
    help="The view of each task: MINIMAL, BASIC or FULL.",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    help=f"Tasks per request (server default 256; {MAX_PAGE_SIZE} with --all).",
)
@click.option("--page-token", metavar="TOKEN", help="Start at this next_page_token.")
@_server_option
@_reported("list")
def list_(
    state: str | None,
    tags: list[tuple[str, str]],
    name_prefix: str | None,
    every: bool,
    as_json: bool,
    view: str,
    page_size: int | None,
    page_token: str | None,
    server: str | None,
) -> int:
    """List tasks, newest first: a table of id, state, name and creation time."""
    params: list[tuple[str, str | int]] = [("view", view.upper())]
    if state:
        params.append(("state", state.upper()))
    if name_prefix:
        params.append(("name_prefix", name_prefix))
    params += display.tag_params(tags)
    size = page_size or (MAX_PAGE_SIZE if every else None)
    if size:
        params.append(("page_size", size))
    tasks: list[dict[str, Any]] = []
    token = page_token
    with _connect(server) as connection:
        while True:
            page = connection.list_tasks(params + ([("page_token", token)] if token else []))
            tasks += page.get("tasks") or []
            token = page.get("next_page_token") or None
            if not every or not token:
                break
    if as_json:
        body: dict[str, Any] = {"tasks": tasks}
        if token:
            body["next_page_token"] = token
        click.echo(json.dumps(body, indent=2))
        return 0
    click.echo(display.tasks_table(tasks), nl=False)
    if token:
        click.echo(
            f"more tasks follow: add --all to list them all, or --page-token {token}", err=True
        )
    return 0


def _tags(values: tuple[str, ...]) -> list[tuple[str, str]]:
    try:
        return [display.parse_tag(value) for value in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@task.command()
@click.argument("task_ids", metavar="ID...", nargs=-1, required=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Give up (exit status 3) after this long; default: wait as long as it takes.",
)
@click.option(
    "--max-interval",
    type=click.FloatRange(min=waiter.FIRST_INTERVAL),
    default=waiter.MAX_INTERVAL,
    show_default=True,
    metavar="SECONDS",
    help="Longest pause between polls (polls start fast and slow down while nothing changes).",
)
@_server_option
@_reported("wait")
def wait(
    task_ids: tuple[str, ...], timeout: float | None, max_interval: float, server: str | None
) -> int:
    """Wait until the tasks end; print each state change, and progress on stderr.

    Exit status: 0 when all COMPLETE, 1 when any ended in EXECUTOR_ERROR (and none worse),
    2 when any ended in SYSTEM_ERROR or CANCELED, 3 when the wait itself failed.
    """
    with _connect(server) as connection:
        follow = waiter.Waiter(connection, task_ids, sys.stdout, sys.stderr, max_interval, timeout)
        return follow.run()


@task.command()
@click.argument("task_ids", metavar="ID...", nargs=-1, required=True)
@_server_option
@_reported("cancel")
def cancel(task_ids: tuple[str, ...], server: str | None) -> int:
    """Cancel tasks; print the id of each one asked to stop (final tasks stay as they are)."""
    status = 0
    with _connect(server) as connection:
        for task_id in dict.fromkeys(task_ids):
            try:
                connection.cancel_task(task_id)
            except ClientError as exc:
                if exc.status not in (400, 404):  # not about this one task: stop here
                    raise
                click.echo(f"{PROG} cancel: {exc}", err=True)
                status = ERROR
                continue
            click.echo(task_id)
    return status


@task.command()
@click.argument("task_id", metavar="ID")
@click.option(
    "--executor",
    type=click.IntRange(min=0),
    metavar="N",
    help="Only executor N (from 0); default: every executor, in order.",
)
@click.option("--stderr", "stderr", is_flag=True, help="Print stderr instead of stdout.")
@_server_option
@_reported("logs")
def logs(task_id: str, executor: int | None, stderr: bool, server: str | None) -> int:
    """Print the stdout (or stderr) of a task's executors in its last attempt.

    TES servers keep the end of each stream, so long outputs show their last part.
    """
    with _connect(server) as connection:
        found = connection.get_task(task_id, "FULL")
    chunks = [
        str(entry.get("stderr" if stderr else "stdout") or "")
        for entry in display.executor_logs(found, executor)
    ]
    text = ""
    for chunk in filter(None, chunks):
        if text and not text.endswith("\n"):
            text += "\n"
        text += chunk
    click.echo(text, nl=False)
    return 0
