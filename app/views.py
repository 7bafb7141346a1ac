"""The three TES views of a stored task (pure functions on the stored doc).

Stored docs are written only by our own code: a task validated by ``TaskIn`` and logs built by
the watcher. Shaping a response is therefore a projection onto the response models' fields
(``Task``, ``TaskLog`` … in app/models.py), not a second validation: it keeps exactly the
spec's fields, drops nulls, and turns ``size_bytes`` into the string the spec wants, at a
fraction of a full model round trip (pages of 256 tasks render this way).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

from pydantic import BaseModel

from app.models import (
    Executor,
    ExecutorLog,
    Input,
    Output,
    OutputFileLog,
    Resources,
    Task,
    TaskLog,
    View,
)

Json = dict[str, Any]


def _fields(model: type[BaseModel], *without: str) -> frozenset[str]:
    return frozenset(model.model_fields) - frozenset(without)


_TASK = _fields(Task)
_INPUT = {View.FULL: _fields(Input), View.BASIC: _fields(Input, "content")}
_OUTPUT = _fields(Output)
_EXECUTOR = _fields(Executor)
_RESOURCES = _fields(Resources)
_TASKLOG = {View.FULL: _fields(TaskLog), View.BASIC: _fields(TaskLog, "system_logs")}
_EXECUTOR_LOG = {
    View.FULL: _fields(ExecutorLog),
    View.BASIC: _fields(ExecutorLog, "stdout", "stderr"),
}
_FILE_LOG = _fields(OutputFileLog)


def _pick(obj: Json, keys: frozenset[str]) -> Json:
    return {key: value for key, value in obj.items() if key in keys and value is not None}


def _file_log(entry: Json) -> Json:
    out = _pick(entry, _FILE_LOG)
    out["size_bytes"] = str(out.get("size_bytes", 0))  # int64 travels as a string
    return out


def _tasklog(entry: Json, view: View) -> Json:
    out = _pick(entry, _TASKLOG[view])
    out["logs"] = [_pick(log, _EXECUTOR_LOG[view]) for log in out.get("logs") or ()]
    out["outputs"] = [_file_log(item) for item in out.get("outputs") or ()]
    return out


def render(doc: Json, view: View) -> Json:
    """Return the task JSON for ``view``, with exactly the spec's fields."""
    if view is View.MINIMAL:
        return {"id": doc["id"], "state": doc["state"]}
    out = _pick(doc, _TASK)
    if "inputs" in out:
        out["inputs"] = [_pick(item, _INPUT[view]) for item in out["inputs"]]
    if "outputs" in out:
        out["outputs"] = [_pick(item, _OUTPUT) for item in out["outputs"]]
    out["executors"] = [_pick(item, _EXECUTOR) for item in out.get("executors") or ()]
    if "resources" in out:
        out["resources"] = _pick(out["resources"], _RESOURCES)
    if out.get("logs"):
        out["logs"] = [_tasklog(entry, view) for entry in out["logs"]]
    else:
        # `logs` appears once an attempt has started, never as [] (design section 4).
        out.pop("logs", None)
    return out


# -- pre-rendered views: what a page of BASIC or FULL tasks is concatenated from ------------


def fragments(doc: Json) -> tuple[str, str]:
    """Return the BASIC and FULL views of a stored doc as JSON text, less ``id`` and ``state``.

    Stores keep them beside the doc, rewritten whenever the doc changes; ``id`` and ``state``
    are spliced in when read (:func:`task_json`), since a state change does not touch the doc.
    """
    full_doc = {"id": "", "state": "", **doc}
    texts = []
    for view in (View.BASIC, View.FULL):
        out = render(full_doc, view)
        del out["id"], out["state"]
        texts.append(json.dumps(out))
    return texts[0], texts[1]


#: A string as ``json.dumps`` writes it, without the encoder's set-up (a page has 512 of them).
_string = encode_basestring_ascii


def task_json(task_id: str, state: str, fragment: str | None = None) -> str:
    """Return one task's JSON text: ``fragment`` (None: MINIMAL) with ``id`` and ``state``.

    The same text as ``json.dumps(render(doc, view))``, byte for byte.
    """
    head = f'{{"id": {_string(task_id)}, "state": {_string(state)}'
    if fragment is None or len(fragment) <= 2:
        return head + "}"
    return f"{head}, {fragment[1:]}"


def page_json(tasks: list[str], next_page_token: str | None = None) -> str:
    """Return a ListTasks body from its tasks' JSON texts, as ``json.dumps`` would write it."""
    more = "" if next_page_token is None else f', "next_page_token": {_string(next_page_token)}'
    return f'{{"tasks": [{", ".join(tasks)}]{more}}}'
