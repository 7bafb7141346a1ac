"""The dashboard's HTML: pure functions from task JSON (as the API shows it) to pages.

Everything a task's owner wrote (names, tags, commands, logs) is escaped. The pages need no
JavaScript framework: a few lines of inline script refresh what is live, and every page also
works with scripts off (the links and the cancel form are plain HTML).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from app.dashboard import style
from app.models import State

Json = dict[str, Any]
ROOT = "/dashboard"
ACTIVE = frozenset({"QUEUED", "INITIALIZING", "RUNNING", "CANCELING"})
STATES = [state.value for state in State if state is not State.UNKNOWN]
WAITING = ("waiting for Kueue: ", "waiting for a node: ", "Kueue has created no Workload")


def epoch(stamp: object) -> float | None:
    """Return an RFC 3339 time as epoch seconds, or None."""
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def duration(seconds: float) -> str:
    """Return a short human duration: 45s, 3m 20s, 2h 5m, 3d 4h."""
    s = int(max(0.0, seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // subsize}{sub}"
    return f"{s // 60}m {s % 60}s" if s >= 60 else f"{s}s"


def ago(stamp: object, now: float) -> str:
    """Return ``<time>`` of how long ago ``stamp`` was, with the exact time on hover."""
    at = epoch(stamp)
    if at is None:
        return ""
    exact = escape(str(stamp))
    return f'<time datetime="{exact}" title="{exact}">{duration(now - at)} ago</time>'


def badge(state: str) -> str:
    """Return a coloured state badge."""
    return f'<span class="badge s-{escape(state.lower())}">{escape(state)}</span>'


def reason(task: Json) -> str | None:
    """Return why a task waits: the last "waiting for …" line of its last attempt, if any."""
    logs = task.get("logs") or []
    lines = (logs[-1].get("system_logs") or []) if logs else []
    return next((line for line in reversed(lines) if line.startswith(WAITING)), None)


def page(title: str, body: str, *, live: bool = False, active: str = "") -> str:
    """Return a whole page: header with navigation, ``body``, and the live-refresh script."""
    nav = "".join(
        f'<a href="{ROOT}/{href}" class="{"on" if active == name else ""}">{name}</a>'
        for name, href in (("Tasks", ""), ("Queues", "queues"))
    )
    script = f"<script>{style.LIVE_JS}</script>" if live else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · kueue-tes</title><style>{style.CSS}</style></head>"
        f'<body><header><a class="brand" href="{ROOT}/">kueue-tes</a><nav>{nav}</nav>'
        f'<span class="live" id="live" hidden>live</span></header>'
        f'<main id="main">{body}</main>{script}</body></html>'
    )


def _link(params: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "", [])}
    return f"{ROOT}/?{urlencode(kept, doseq=True)}" if kept else f"{ROOT}/"


def _tags(tags: Mapping[str, str] | None) -> str:
    return "".join(
        f'<span class="tag">{escape(k)}{"=" + escape(str(v)) if v else ""}</span>'
        for k, v in (tags or {}).items()
    )


def task_list(
    tasks: list[Json],
    filters: Mapping[str, Any],
    next_token: str | None,
    now: float,
    reasons: Mapping[str, str] | None = None,
) -> str:
    """Return the task list page: the ListTasks filters as a form, one row per task, and
    under each waiting task why it waits (``reasons``: task id → reason)."""
    state = filters.get("state") or ""
    options = "".join(
        f'<option value="{s}"{" selected" if s == state else ""}>{s or "any"}</option>'
        for s in ["", *STATES]
    )
    size = str(filters.get("page_size") or 50)
    sizes = "".join(
        f"<option{' selected' if n == size else ''}>{n}</option>"
        for n in ("20", "50", "100", "256")
    )
    prefix, tags = escape(filters.get("name_prefix") or ""), escape(filters.get("tags") or "")
    form = (
        f'<form class="filters" method="get" action="{ROOT}/">'
        f'<label>Name starts with<input name="name_prefix" value="{prefix}"></label>'
        f'<label>State<select name="state">{options}</select></label>'
        "<label>Tags <small>key or key=value, space-separated</small>"
        f'<input name="tags" value="{tags}" size="28"></label>'
        f'<label>Per page<select name="page_size">{sizes}</select></label>'
        f'<button type="submit">Filter</button><a class="clear" href="{ROOT}/">clear</a></form>'
    )
    rows = []
    for task in tasks:
        executors = task.get("executors") or []
        image = escape(str(executors[0].get("image", ""))) if executors else ""
        more = f" <small>+{len(executors) - 1}</small>" if len(executors) > 1 else ""
        why = (reasons or {}).get(task["id"]) if task["state"] == "QUEUED" else None
        note = f'<div class="why">{escape(why)}</div>' if why else ""
        href = f"{ROOT}/tasks/{escape(task['id'])}"
        live = " data-live" if task["state"] in ACTIVE else ""
        rows.append(
            f'<tr data-state="{escape(task["state"])}"{live}>'
            f'<td><a class="id" href="{href}">{escape(task["id"])}</a></td>'
            f"<td>{escape(task.get('name') or '')}{note}</td><td>{badge(task['state'])}</td>"
            f"<td>{ago(task.get('creation_time'), now)}</td><td>{_tags(task.get('tags'))}</td>"
            f"<td><code>{image}</code>{more}</td></tr>"
        )
    table = (
        '<table class="tasks"><thead><tr><th>Task</th><th>Name</th><th>State</th><th>Created</th>'
        f"<th>Tags</th><th>Image</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No tasks match.</p>'
    )
    pager = ""
    if next_token:
        older = _link({**filters, "page_token": next_token})
        pager = f'<nav class="pager"><a href="{escape(older)}">Older tasks →</a></nav>'
    if filters.get("page_token"):
        pager = pager or '<nav class="pager"></nav>'
        first = escape(_link({**filters, "page_token": None}))
        pager = pager.replace(
            '<nav class="pager">', f'<nav class="pager"><a href="{first}">← Newest</a>', 1
        )
    return f"<h1>Tasks</h1>{form}{table}{pager}"


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows if v) + "</dl>"


def _pre(text: str | None, label: str) -> str:
    if not text:
        return ""
    return f'<div class="stream"><div class="label">{label}</div><pre>{escape(text)}</pre></div>'


def _attempt(number: int, attempt: Json, now: float) -> str:
    start, end = attempt.get("start_time"), attempt.get("end_time")
    took = ""
    if epoch(start) is not None:
        took = duration((epoch(end) or now) - (epoch(start) or now)) + ("" if end else " so far")
    meta = attempt.get("metadata") or {}
    head = _kv(
        [
            ("admitted", escape(str(start or ""))),
            ("ended", escape(str(end or ""))),
            ("ran", took),
            ("evicted", escape(str(meta.get("evicted", "")))),
        ]
    )
    system = "".join(
        f'<li class="{"wait" if line.startswith(WAITING) else ""}">{escape(line)}</li>'
        for line in attempt.get("system_logs") or []
    )
    executors = []
    for i, log in enumerate(attempt.get("logs") or []):
        code = log.get("exit_code")
        ok = "ok" if code == 0 else "bad"
        span = f"{log.get('start_time') or ''} → {log.get('end_time') or ''}"
        executors.append(
            f'<div class="exec"><h4>executor {i} <span class="code {ok}">exit '
            f"{escape(str(code))}</span><small>{escape(span)}</small></h4>"
            f"{_pre(log.get('stdout'), 'stdout')}{_pre(log.get('stderr'), 'stderr')}</div>"
        )
    outputs = "".join(
        f"<tr><td><code>{escape(o.get('url', ''))}</code></td>"
        f"<td><code>{escape(o.get('path', ''))}</code></td>"
        f'<td class="num">{escape(str(o.get("size_bytes", "")))}</td></tr>'
        for o in attempt.get("outputs") or []
    )
    out_table = (
        '<h4>outputs</h4><table class="small"><tr><th>url</th><th>path</th><th>bytes</th></tr>'
        f"{outputs}</table>"
        if outputs
        else ""
    )
    system_block = f'<h4>system logs</h4><ul class="syslog">{system}</ul>' if system else ""
    return (
        f'<section class="attempt"><h3>Attempt {number}</h3>{head}{system_block}'
        f"{''.join(executors)}{out_table}</section>"
    )


def task_page(task: Json, now: float, cancel_path: str | None) -> str:
    """Return one task's page: summary, why it waits, executors, attempts with logs, outputs."""
    state = task["state"]
    name = task.get("name") or task["id"]
    why = reason(task) if state == "QUEUED" else None
    waiting = f'<p class="why big">{escape(why)}</p>' if why else ""
    cancel = ""
    if cancel_path and state in ACTIVE - {"CANCELING"}:
        cancel = (
            f'<form method="post" action="{escape(cancel_path)}" class="cancel" '
            "onsubmit=\"return confirm('Cancel this task?')\"><button>Cancel task</button></form>"
        )
    resources = task.get("resources") or {}
    summary = _kv(
        [
            ("id", f"<code>{escape(task['id'])}</code>"),
            ("created", ago(task.get("creation_time"), now)),
            ("description", escape(task.get("description") or "")),
            ("tags", _tags(task.get("tags"))),
            (
                "resources",
                escape(
                    ", ".join(f"{k}={v}" for k, v in resources.items() if k != "backend_parameters")
                ),
            ),
            (
                "backend",
                escape(
                    ", ".join(
                        f"{k}={v}" for k, v in (resources.get("backend_parameters") or {}).items()
                    )
                ),
            ),
        ]
    )
    executors = "".join(
        f"<tr><td>{i}</td><td><code>{escape(str(e.get('image', '')))}</code></td>"
        f"<td><code>{escape(' '.join(map(str, e.get('command') or [])))}</code></td>"
        f"<td><code>{escape(str(e.get('workdir') or ''))}</code></td></tr>"
        for i, e in enumerate(task.get("executors") or [])
    )
    inputs = "".join(
        f"<tr><td><code>{escape(str(i.get('url') or '(inline content)'))}</code></td>"
        f"<td><code>{escape(str(i.get('path', '')))}</code></td></tr>"
        for i in task.get("inputs") or []
    )
    declared = "".join(
        f"<tr><td><code>{escape(str(o.get('url', '')))}</code></td>"
        f"<td><code>{escape(str(o.get('path', '')))}</code></td></tr>"
        for o in task.get("outputs") or []
    )
    head = '<table class="small"><tr><th>url</th><th>path</th></tr>'
    attempts = (
        "".join(
            _attempt(i + 1, a, now) for i, a in reversed(list(enumerate(task.get("logs") or [])))
        )
        or '<p class="empty">No attempt yet.</p>'
    )
    return (
        f'<div class="title"{" data-live" if state in ACTIVE else ""}><h1>{escape(name)}</h1>'
        f"{badge(state)}{cancel}</div>{waiting}{summary}"
        '<h2>Executors</h2><table class="small"><tr><th>#</th><th>image</th><th>command</th>'
        f"<th>workdir</th></tr>{executors}</table>"
        + (f"<h2>Inputs</h2>{head}{inputs}</table>" if inputs else "")
        + (f"<h2>Outputs</h2>{head}{declared}</table>" if declared else "")
        + f"<h2>Attempts</h2>{attempts}"
    )


def queues_page(rows: list[Json], now: float) -> str:
    """Return the queues page: per LocalQueue, what waits, what runs, what ended in the hour."""
    body = []
    for row in rows:
        oldest = row.get("oldest_since")
        wait = duration(now - oldest) if oldest is not None else ""
        who = row.get("oldest_link")
        wait_cell = f'<a href="{escape(who)}">{wait}</a>' if who and wait else wait
        why = row.get("reason")
        body.append(
            f"<tr><td><strong>{escape(row['queue'] or '(none)')}</strong></td>"
            f'<td class="num">{row["queued"]}</td><td class="num">{row["running"]}</td>'
            f'<td class="num">{row["finished"]}</td><td class="num">{wait_cell}</td>'
            f"<td>{f'<span class=why>{escape(why)}</span>' if why else ''}</td></tr>"
        )
    table = (
        '<table class="queues"><thead><tr><th>LocalQueue</th><th>queued</th><th>running</th>'
        "<th>finished (last hour)</th><th>oldest wait</th><th>why it waits</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        if body
        else '<p class="empty">No tasks yet.</p>'
    )
    note = (
        '<p class="note">Counts cover every task in each queue. "running" counts INITIALIZING, '
        "RUNNING and CANCELING tasks.</p>"
    )
    return f"<h1 data-live>Queues</h1>{table}{note}"


def error_page(status: int, message: str) -> str:
    """Return a small error page."""
    return page(f"{status}", f'<h1>{status}</h1><p class="why big">{escape(message)}</p>')


def now() -> float:
    """Return the time the pages count from."""
    return time.time()
