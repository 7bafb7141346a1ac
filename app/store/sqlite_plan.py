"""How the SQLite store drives a listing: which index finds a page soonest, and its SQL.

Pure apart from ``choose``, which samples the candidate indexes through the connection it is
given (this module does not import ``sqlite3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from app.store.base import TaskFilter


class Database(Protocol):
    """What ``choose`` needs of a connection."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any:
        """Run one statement; return a cursor."""
        ...


#: How many matches of a filter the planner looks at: up to SORTABLE name matches are cheap
#: to sort by id; for the other filters, where the _SAMPLE-th newest match lies tells density.
SORTABLE, _SAMPLE = 4096, 1024


@dataclass(frozen=True)
class Stream:
    """One way to drive a listing: an index scanned under ``terms`` (columns, no alias)."""

    kind: str  # "tag", "state", "name" (the only one not in id order), or "base"
    index: str | None
    terms: tuple[str, ...]
    params: tuple[Any, ...]
    tag: str | None = None  # the tag key a "tag" stream serves, from the tags table
    owner: bool = False  # the index applies the owner filter itself

    def where(self, alias: str) -> str:
        """Return the terms as one condition on table ``alias``."""
        return " AND ".join(f"{alias}.{term}" for term in self.terms) or "1"


def _prefix_end(prefix: str) -> str | None:
    """Return the least string above every string that starts with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code <= 0x10FFFF:  # surrogates cannot be stored as UTF-8: skip to U+E000
            return "".join(chars) + chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)
    return None


def streams(flt: TaskFilter, before: str | None) -> tuple[list[Stream], Stream]:
    """Return the filters' own index streams, and the owner's (or all) id-order stream."""
    own: tuple[str, ...] = ("owner = ?",) if flt.owner is not None else ()
    own_p: tuple[Any, ...] = (flt.owner,) if flt.owner is not None else ()
    lt: tuple[str, ...] = ("id < ?",) if before else ()
    lt_p: tuple[Any, ...] = (before,) if before else ()
    streams: list[Stream] = []
    for key, value in flt.tags.items():
        kv: tuple[str, ...] = ("value = ?",) if value else ()
        terms = ("key = ?", *kv, *(f"task_{term}" for term in lt))
        params = (key, *((value,) if value else ()), *lt_p)
        streams.append(Stream("tag", f"tags_{'kv' if value else 'key'}", terms, params, key))
    if flt.state is not None:
        terms, params = (*own, "state = ?", *lt), (*own_p, flt.state.value, *lt_p)
        index = "tasks_owner_state_name" if own else "tasks_state_name"
        streams.append(Stream("state", index, terms, params, owner=True))
    if flt.name_prefix:
        end = _prefix_end(flt.name_prefix)
        upper: tuple[str, ...] = ("name < ?",) if end is not None else ()
        terms = ("name >= ?", *upper, *lt)
        params = (flt.name_prefix, *((end,) if end is not None else ()), *lt_p)
        streams.append(Stream("name", "tasks_name", terms, params))
    base = Stream("base", "tasks_owner" if own else None, (*own, *lt), (*own_p, *lt_p), owner=True)
    return streams, base


def choose(db: Database, streams: list[Stream], base: Stream) -> Stream:
    """Pick the stream that finds a page soonest, from a capped look at each one's matches."""
    if not streams:
        return base
    if len(streams) == 1 and streams[0].kind != "name" and (streams[0].owner or base.index is None):
        return streams[0]
    if base.index is not None:  # an owner filter: the owner's own stream is a candidate too
        streams = [*streams, base]
    ranked: list[tuple[int, int, str, Stream]] = []
    for stream in streams:
        table, col = ("tags", "task_id") if stream.tag is not None else ("tasks", "id")
        sub = (
            f"SELECT s.{col} FROM {table} AS s INDEXED BY {stream.index} WHERE {stream.where('s')}"
        )
        if stream.kind != "name":
            # For a dense filter, the older its _SAMPLE-th newest match, the sparser it is.
            sample = f"{sub} ORDER BY s.{col} DESC LIMIT 1 OFFSET {_SAMPLE - 1}"
            row = db.execute(sample, stream.params).fetchone()
            if row is not None:
                ranked.append((1, 0, row[0], stream))
                continue
        cap = SORTABLE if stream.kind == "name" else _SAMPLE
        count = db.execute(f"SELECT count(*) FROM ({sub} LIMIT {cap})", stream.params).fetchone()
        if count[0] < cap:  # few matches: driving from them costs about their number
            ranked.append((0, count[0], "", stream))
    # Nothing ranked: only a dense name prefix, so scan newest first and test the name.
    return min(ranked, key=lambda rank: rank[:3])[3] if ranked else base


def listing(
    stream: Stream, flt: TaskFilter, cols: str, window: int = 0
) -> tuple[str, tuple[Any, ...]]:
    """Return the listing SQL of columns ``cols`` driven by ``stream`` and its parameters
    (less the LIMIT). A ``window`` limits an id-order scan to that many of the newest tasks.
    """
    index = f" INDEXED BY {stream.index}" if stream.index else ""
    if stream.tag is not None:
        source = f"tags AS g{index} CROSS JOIN tasks AS t ON t.id = g.task_id"
        where, order = [stream.where("g")], "g.task_id"
    else:
        source, where, order = f"tasks AS t{index}", [stream.where("t")], "t.id"
    params: list[Any] = list(stream.params)
    if window:
        where.append(
            f"t.id >= coalesce((SELECT w.id FROM tasks AS w{index} WHERE {stream.where('w')}"
            f" ORDER BY w.id DESC LIMIT 1 OFFSET {window - 1}), '')"
        )
        params.extend(stream.params)
    # A leading + keeps a term off the indexes, so SQLite drives from the chosen one only.
    if flt.owner is not None and not stream.owner:
        where.append("+t.owner = ?")
        params.append(flt.owner)
    if flt.state is not None and stream.kind != "state":
        where.append("+t.state = ?")
        params.append(flt.state.value)
    if flt.name_prefix and stream.kind != "name":
        end = _prefix_end(flt.name_prefix)
        where.append("+t.name >= ?" + (" AND +t.name < ?" if end is not None else ""))
        params.extend((flt.name_prefix, end) if end is not None else (flt.name_prefix,))
    for key, value in flt.tags.items():
        if key != stream.tag:
            # Tested on the driving tag row when there is one, before the task row is read.
            task = "g.task_id" if stream.tag is not None else "t.id"
            kv = " AND x.value = ?" if value else ""
            where.append(
                f"EXISTS (SELECT 1 FROM tags AS x WHERE x.task_id = {task} AND x.key = ?{kv})"
            )
            params.extend((key, value) if value else (key,))
    cond = " AND ".join(where)
    if stream.kind == "name":
        # Sort the matching ids alone, then read just the page's rows: reading each match's
        # row before sorting would cost a lookup per match.
        sql = (
            f"SELECT {cols} FROM tasks AS t WHERE t.id IN (SELECT t.id FROM {source}"
            f" WHERE {cond} ORDER BY t.id DESC LIMIT ?) ORDER BY t.id DESC"
        )
    else:
        sql = f"SELECT {cols} FROM {source} WHERE {cond} ORDER BY {order} DESC LIMIT ?"
    return sql, tuple(params)
