"""The checks that protect the system, run on a parsed CreateTask body (pure, no I/O).

Each failure names the field the client must change; Pydantic's own errors are turned into
the same shape by :func:`from_pydantic`.
"""

from __future__ import annotations

import functools
import posixpath

from pydantic import ValidationError

from app import policy
from app.models import FileType, Resources, TaskIn
from app.settings import Settings

#: Raised for anything the client must change; defined with the policy, which raises it too.
InvalidTask = policy.InvalidTask

#: Mount points a task may not use: shadowing them would break the container or our control
#: volume (design section 4).
FORBIDDEN_ROOTS = ("/proc", "/dev", "/sys", "/tes")
_WILDCARDS = frozenset("*?[")


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def from_pydantic(exc: ValidationError) -> InvalidTask:
    """Turn the first Pydantic error into an InvalidTask naming its field."""
    error = exc.errors(include_url=False)[0]
    return InvalidTask(_location(tuple(error["loc"])), str(error["msg"]))


def has_wildcard(path: str) -> bool:
    """Tell whether ``path`` uses POSIX glob characters."""
    return any(char in _WILDCARDS for char in path)


def check_path(field: str, path: str) -> None:
    """Require an absolute, normalised path that shadows nothing the container needs."""
    if not path.startswith("/"):
        raise InvalidTask(
            field, f"'{path}' is relative; give an absolute path inside the container"
        )
    if "\x00" in path:
        raise InvalidTask(field, "the path contains a NUL byte")
    if ".." in path.split("/"):
        raise InvalidTask(field, f"'{path}' contains '..'; give the path without it")
    normal = posixpath.normpath(path)
    if normal in ("/", "//"):
        raise InvalidTask(field, "'/' cannot be mounted over; choose a directory below it")
    for root in FORBIDDEN_ROOTS:
        if normal == root or normal.startswith(root + "/"):
            raise InvalidTask(field, f"'{path}' is under {root}, which tasks may not use")


def _check_parent(field: str, path: str) -> None:
    # Executors mount the directory that will hold this file; "/" cannot be mounted over.
    parent = posixpath.dirname(posixpath.normpath(path))
    if has_wildcard(path):
        parts = path.split("/")
        first = next(i for i, part in enumerate(parts) if has_wildcard(part))
        parent = "/".join(parts[:first]) or "/"
    if parent == "/":
        raise InvalidTask(field, f"'{path}' is directly under /; put it in a directory")


def _check_inputs(task: TaskIn, max_content_bytes: int) -> None:
    for i, item in enumerate(task.inputs or []):
        where = f"inputs[{i}]"
        check_path(f"{where}.path", item.path)
        if item.content:
            # TES 1.1: when content is not empty, url is ignored.
            if item.type == FileType.DIRECTORY:
                raise InvalidTask(f"{where}.content", "inline content can only be a FILE")
            size = len(item.content.encode("utf-8", "surrogatepass"))
            if size > max_content_bytes:
                raise InvalidTask(
                    f"{where}.content",
                    f"{size} bytes is over the limit of {max_content_bytes}; "
                    "put the data behind a url instead",
                )
        elif not item.url and item.content is None:
            raise InvalidTask(f"{where}.url", "an input needs a url or inline content")


def _check_outputs(task: TaskIn) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(task.outputs or []):
        where = f"outputs[{i}]"
        check_path(f"{where}.path", item.path)
        if item.type != FileType.DIRECTORY or has_wildcard(item.path):
            _check_parent(f"{where}.path", item.path)
        if not item.url:
            raise InvalidTask(f"{where}.url", "an output needs a url to upload to")
        if item.path_prefix:  # TES 1.1: ignored (so may be empty) when there are no wildcards
            check_path(f"{where}.path_prefix", item.path_prefix)
            if not item.path.startswith(item.path_prefix):
                raise InvalidTask(
                    f"{where}.path_prefix", f"'{item.path_prefix}' is not a prefix of the path"
                )
        elif has_wildcard(item.path):
            raise InvalidTask(
                f"{where}.path_prefix", "a path with wildcards needs a path_prefix to remove"
            )
        normal = posixpath.normpath(item.path)
        if normal in seen:
            raise InvalidTask(f"{where}.path", f"the same path as outputs[{seen[normal]}]")
        seen[normal] = i


def _check_executors(task: TaskIn) -> None:
    for i, executor in enumerate(task.executors):
        where = f"executors[{i}]"
        for name in ("workdir", "stdin", "stdout", "stderr"):
            value = getattr(executor, name)
            if value is not None:
                check_path(f"{where}.{name}", value)
                if name in ("stdout", "stderr"):
                    _check_parent(f"{where}.{name}", value)
        for key in executor.env or {}:
            if not key or "=" in key or "\x00" in key:
                raise InvalidTask(f"{where}.env", f"'{key}' is not a valid variable name")


def check_task(
    task: TaskIn,
    honoured: list[str],
    max_content_bytes: int,
    settings: Settings | None = None,
    envelope: policy.Envelope | None = None,
) -> list[str]:
    """Check a parsed task and bring its backend parameters within policy; return system logs.

    Raises InvalidTask for anything the client must change. ``settings`` carries the operator's
    policy (docs/kueue.md); without it the defaults apply. ``envelope`` is the caller's route
    (docs/auth.md); without it the global policy applies.
    """
    _check_executors(task)
    _check_inputs(task, max_content_bytes)
    _check_outputs(task)
    for i, volume in enumerate(task.volumes or []):
        check_path(f"volumes[{i}]", volume)
    params, notes = policy.check(task, settings or _defaults(), honoured, envelope)
    if task.resources is not None and task.resources.backend_parameters is not None:
        task.resources.backend_parameters = params
    elif params:  # the caller's route added its queue or run-time cap
        task.resources = task.resources or Resources()
        task.resources.backend_parameters = params
    return notes


@functools.cache
def _defaults() -> Settings:
    # The field defaults only, not the environment: a pure check stays pure.
    return Settings.model_construct()
