"""Which pieces of the work volume each executor mounts, and where (pure; docs/task-pod.md)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Literal

Json = dict[str, Any]
_WILDCARDS = frozenset("*?[")


@dataclass(frozen=True, order=True)
class Mount:
    """One piece of the work volume that executors mount at ``path``."""

    path: str
    kind: Literal["dir", "file"]

    @property
    def sub_path(self) -> str:
        """Where the piece lives in the work volume."""
        return "fs" + self.path.rstrip("/")


def _wildcard_dir(path: str) -> str:
    parts = path.split("/")
    for i, part in enumerate(parts):
        if any(c in _WILDCARDS for c in part):
            return "/".join(parts[:i]) or "/"
    return posixpath.dirname(path)


def _norm(path: str) -> str:
    return posixpath.normpath(path)


def plan_mounts(task: Json) -> list[Mount]:
    """Return the work-volume mounts every executor gets, nested paths collapsed."""
    wanted: dict[str, Literal["dir", "file"]] = {}

    def want(path: str, kind: Literal["dir", "file"]) -> None:
        path = _norm(path)
        if wanted.get(path) != "dir":
            wanted[path] = kind

    for item in task.get("inputs", ()):
        want(item["path"], "dir" if item.get("type") == "DIRECTORY" else "file")
    for item in task.get("outputs", ()):
        path = item["path"]
        if any(c in _WILDCARDS for c in path):
            want(_wildcard_dir(path), "dir")
        elif item.get("type") == "DIRECTORY":
            want(path, "dir")
        else:
            want(posixpath.dirname(_norm(path)), "dir")
    for volume in task.get("volumes", ()):
        want(volume, "dir")
    for executor in task.get("executors", ()):
        if executor.get("stdin"):
            want(executor["stdin"], "file")
        for stream in ("stdout", "stderr"):
            if executor.get(stream):
                want(posixpath.dirname(_norm(executor[stream])), "dir")
    if "/" in wanted:
        raise ValueError("a mount at / would hide the image; put files in a directory")
    dirs = sorted(p for p, kind in wanted.items() if kind == "dir")
    kept: list[Mount] = []
    for path in sorted(wanted):
        inside = any(path != d and path.startswith(d.rstrip("/") + "/") for d in dirs)
        if not inside:
            kept.append(Mount(path, wanted[path]))
    return kept
