"""What `kueue-tes task` prints: task tables, state changes, progress, logs, reasons (pure)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from app.client.connection import ClientError

Json = dict[str, Any]

#: States in the order a task goes through them, then the final ones.
ACTIVE = ("UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "CANCELING")
#: Final states and the exit status of `task wait` for each (the worst of all tasks wins).
FINAL = {"COMPLETE": 0, "EXECUTOR_ERROR": 1, "SYSTEM_ERROR": 2, "CANCELED": 2, "PREEMPTED": 2}
STATES = ACTIVE + tuple(FINAL)
NAME_WIDTH = 40
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$")


def parse_tag(text: str) -> tuple[str, str]:
    """Split ``KEY=VALUE`` (``KEY=`` or ``KEY``: the key is present, with any value)."""
    key, _, value = text.partition("=")
    if not key:
        raise ValueError(f"{text!r} has no key; use KEY=VALUE, or KEY= for any value")
    return key, value


def tag_params(tags: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return ListTasks' tag parameters: tag_key and tag_value paired in order (AND)."""
    params: list[tuple[str, str]] = []
    for key, value in tags:
        params += [("tag_key", key), ("tag_value", value)]
    return params


def tasks_table(tasks: Iterable[Json]) -> str:
    """Return tasks as an aligned table: id, state, name, created."""
    rows = [("ID", "STATE", "NAME", "CREATED")]
    for task in tasks:
        rows.append(
            (
                _clean(str(task.get("id", ""))),
                _clean(str(task.get("state", ""))),
                _name(task.get("name")),
                _short_time(task.get("creation_time")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join([*(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])), row[3]]).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + "\n"


def state_line(clock: str, task_id: str, state: str) -> str:
    """Return the line `task wait` prints when a task enters a state."""
    return f"{clock} {task_id} {state}"


def progress_line(states: Mapping[str, str], elapsed: float) -> str:
    """Return e.g. ``2 of 3 finished (1 COMPLETE, 1 EXECUTOR_ERROR); 1 RUNNING; 12 s``."""
    counts = Counter(states.values())
    finished = sum(n for state, n in counts.items() if state in FINAL)
    done = ", ".join(f"{counts[s]} {s}" for s in FINAL if counts[s])
    waiting = ", ".join(f"{n} {s}" for s, n in _ordered(counts) if s not in FINAL)
    parts = [f"{finished} of {len(states)} finished" + (f" ({done})" if done else "")]
    if waiting:
        parts.append(waiting)
    parts.append(f"{elapsed:.0f} s")
    return "; ".join(parts)


def wait_status(states: Iterable[str]) -> int:
    """Return the exit status of `task wait`: 0 all COMPLETE, 1 EXECUTOR_ERROR, 2 worse."""
    return max((FINAL[state] for state in states), default=0)


def failure_reason(task: Json) -> str:
    """Return, in one line, why a task did not complete and where to look next."""
    task_id, state = str(task.get("id")), task.get("state")
    attempt = _last_attempt(task)
    if state == "EXECUTOR_ERROR":
        for index, entry in enumerate(attempt.get("logs") or []):
            code = entry.get("exit_code")
            if code not in (0, None):
                return (
                    f"executor {index} exited with {code}; "
                    f"see: kueue-tes task logs {task_id} --executor {index} --stderr"
                )
    lines = [" ".join(str(line).split()) for line in attempt.get("system_logs") or []]
    if any(lines):
        return _shorten([line for line in lines if line][-1], 400)
    return f"see: kueue-tes task get {task_id}"


def executor_logs(task: Json, executor: int | None) -> list[Json]:
    """Return the executor logs of a task's last attempt: all, or executor ``executor``'s."""
    task_id, state = task.get("id"), task.get("state")
    entries = _last_attempt(task).get("logs") or []
    if not entries and state in FINAL:
        raise ClientError(
            f"task {task_id} ended {state} with no executor logs; its system_logs say why: "
            f"kueue-tes task get {task_id}"
        )
    if not entries:
        raise ClientError(f"task {task_id} has no executor logs yet (state {state})")
    if executor is None:
        return list(entries)
    if not 0 <= executor < len(entries):
        have = "0" if len(entries) == 1 else f"0 to {len(entries) - 1}"
        raise ClientError(
            f"task {task_id} has no log of executor {executor} in its last attempt, only of "
            f"executor {have} (state {state})"
        )
    return [entries[executor]]


def _last_attempt(task: Json) -> Json:
    attempts = task.get("logs") or []
    last = attempts[-1] if attempts else {}
    return last if isinstance(last, dict) else {}


def _ordered(counts: Counter[str]) -> list[tuple[str, int]]:
    known = [(s, counts[s]) for s in STATES if counts[s]]
    return known + sorted((s, n) for s, n in counts.items() if s not in STATES)


def _clean(text: str) -> str:
    return _CONTROL.sub(" ", text)


def _name(name: Any) -> str:
    text = _clean(str(name)) if name else "-"
    return _shorten(text, NAME_WIDTH)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_time(value: Any) -> str:
    if not value:
        return "-"
    match = _TIME.match(str(value))
    return match.group(1) + match.group(2) if match else _clean(str(value))
