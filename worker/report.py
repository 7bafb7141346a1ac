"""The sequencer's report as the watcher reads it back from the pod log (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.models import State

Json = dict[str, Any]
_EXECUTOR_KEYS = ("exit_code", "start_time", "end_time", "stdout", "stderr")


@dataclass
class Report:
    """The sequencer's report of one attempt."""

    verdict: State | None = None
    executors: list[Json] = field(default_factory=list)
    outputs: list[Json] = field(default_factory=list)
    system_logs: list[str] = field(default_factory=list)
    started: dict[int, str | None] = field(default_factory=dict)  # `running` events: start times

    @property
    def ran(self) -> bool:
        """Tell whether an executor started (skipped executors never ran)."""
        return bool(self.started or self.executors)

    def progress(self) -> list[Json]:
        """Return ExecutorLogs of the executors that ended, without their output tails."""
        keys = ("exit_code", "start_time", "end_time")
        return [{k: e[k] for k in keys if k in e} for e in self.executors if "exit_code" in e]


def read_report(log: str) -> Report:
    """Parse the sequencer's JSON-lines report out of its container log."""
    report = Report()
    by_index: dict[int, Json] = {}
    for raw in log.splitlines():
        try:
            event = json.loads(raw) if raw.lstrip().startswith("{") else None
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict) or event.get("kueue-tes") != 1:
            continue
        kind = event.get("event")
        report.system_logs += [str(s) for s in event.get("system_logs") or ()]
        if kind == "running" and isinstance(event.get("index"), int):
            report.started[event["index"]] = event.get("start_time")
        elif kind == "executor" and not event.get("skipped"):
            entry = {k: event[k] for k in _EXECUTOR_KEYS if event.get(k) is not None}
            by_index[int(event.get("index", len(by_index)))] = entry
        elif kind == "outputs":
            report.outputs = [dict(o) for o in event.get("outputs") or ()]
        elif kind == "verdict" and event.get("state") in State.__members__:
            report.verdict = State(event["state"])
    report.executors = [by_index[i] for i in sorted(by_index)]
    return report
