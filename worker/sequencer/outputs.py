"""Output planning: which local files an Output names, and the URL each one goes to.

Pure apart from reading the local filesystem; the sequencer hands the plan to the filers.
Semantics (TES 1.1):

* FILE: the one file at ``path``; absent, it is a note for system_logs, not an error.
* DIRECTORY: every regular file under ``path``, one upload (and one OutputFileLog) per file,
  at ``url`` + "/" + its path relative to the directory.
* ``path`` with POSIX wildcards (``*``, ``?``, ``[...]``): glob, one path segment at a time
  (``**`` is not recursive; it is ``*``). Each match goes to ``url`` + "/" + its path with
  ``path_prefix`` removed; a matched directory is uploaded whole. No match is a note.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple, TypedDict

from app.models import FileType, Output

#: Characters that make an output path a pattern.
WILDCARDS = frozenset("*?[")


class Upload(NamedTuple):
    """One file to upload: where the sequencer reads it, where the task wrote it, where it goes."""

    local_file: Path
    container_path: str
    url: str


class OutputPlan(NamedTuple):
    """The uploads of one or more outputs, and notes for the task's system_logs."""

    uploads: list[Upload]
    notes: list[str]


class OutputFileLogDict(TypedDict):
    """An OutputFileLog as the sequencer reports it (size as an int)."""

    url: str
    path: str
    size_bytes: int


def has_wildcards(path: str) -> bool:
    """Return whether ``path`` is a glob pattern."""
    return any(char in WILDCARDS for char in path)


def plan_output(
    output: Output, local: Callable[[str], Path], root: Path | None = None
) -> OutputPlan:
    """Return the uploads and notes for one output.

    ``local`` maps a container path to where the sequencer sees it. ``root``, when given, is
    the task's work volume as the sequencer sees it: files that resolve outside it (through
    symbolic links an executor made) are not uploaded, so that a task cannot export the
    sequencer's own files, its credentials among them.
    """
    planner = _Planner(local, root.resolve() if root is not None else None)
    if has_wildcards(output.path):
        planner.glob(output)
    elif output.type is FileType.DIRECTORY:
        planner.directory(output)
    else:
        planner.file(output)
    return OutputPlan(planner.uploads, planner.notes)


def plan_outputs(
    outputs: Iterable[Output], local: Callable[[str], Path], root: Path | None = None
) -> OutputPlan:
    """Return the uploads and notes of all ``outputs``, in order."""
    uploads: list[Upload] = []
    notes: list[str] = []
    for output in outputs:
        plan = plan_output(output, local, root)
        uploads.extend(plan.uploads)
        notes.extend(plan.notes)
    return OutputPlan(uploads, notes)


def output_file_log(upload: Upload) -> OutputFileLogDict:
    """Return the OutputFileLog of an upload, sized from the local file."""
    size = upload.local_file.stat().st_size
    return {"url": upload.url, "path": upload.container_path, "size_bytes": int(size)}


def _join(base: str, relative: str) -> str:
    return f"{base.rstrip('/')}/{relative}"


class _Planner:
    def __init__(self, local: Callable[[str], Path], root: Path | None) -> None:
        self.local = local
        self.root = root
        self.uploads: list[Upload] = []
        self.notes: list[str] = []

    def file(self, output: Output) -> None:
        path = self.local(output.path)
        if not path.exists():
            self.notes.append(f"output {output.path} not found; nothing uploaded")
        elif path.is_dir():
            self.notes.append(
                f"output {output.path} is a directory but is declared FILE; "
                "nothing uploaded (declare it DIRECTORY)"
            )
        elif not path.is_file():
            self.notes.append(f"output {output.path} is not a regular file; nothing uploaded")
        elif self._allowed(path, output.path):
            self.uploads.append(Upload(path, output.path, output.url))

    def directory(self, output: Output) -> None:
        path = self.local(output.path)
        if not path.exists():
            self.notes.append(f"output {output.path} not found; nothing uploaded")
        elif not path.is_dir():
            self.notes.append(
                f"output {output.path} is declared DIRECTORY but is not a "
                "directory; nothing uploaded (declare it FILE)"
            )
        elif self._allowed(path, output.path):
            self._tree(path, output.path, output.url.rstrip("/"))

    def glob(self, output: Output) -> None:
        segments = output.path.split("/")
        # The wildcard-free leading directories are one place the sequencer can see;
        # the rest of the pattern is matched under it.
        fixed = next(i for i, segment in enumerate(segments) if has_wildcards(segment))
        base = "/".join(segments[:fixed]) or "/"
        pattern = "/".join(segments[fixed:])
        local_base = self.local(base)
        prefix = output.path_prefix if output.path_prefix is not None else base
        matches = sorted(glob.glob(pattern, root_dir=local_base)) if local_base.is_dir() else []
        if not matches:
            self.notes.append(f"output {output.path} matched nothing; nothing uploaded")
            return
        url = output.url.rstrip("/")
        for match in matches:
            container = _join(base, match.rstrip("/"))
            path = local_base / match
            if not self._allowed(path, container):
                continue
            relative = self._strip(container, prefix)
            if path.is_dir():
                self._tree(path, container, _join(url, relative))
            elif path.is_file():
                self.uploads.append(Upload(path, container, _join(url, relative)))

    def _tree(self, top: Path, container_top: str, url_top: str) -> None:
        found: list[Upload] = []
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            here = Path(dirpath)
            for name in list(dirnames):
                if (here / name).is_symlink():
                    # Not followed: a link may loop, or lead out of the work volume.
                    dirnames.remove(name)
                    link = _join(container_top, (here / name).relative_to(top).as_posix())
                    self.notes.append(
                        f"output {link} is a symbolic link to a directory; not followed"
                    )
            dirnames.sort()
            for name in sorted(filenames):
                path = here / name
                relative = path.relative_to(top).as_posix()
                container = _join(container_top, relative)
                # FIFOs, sockets and dangling links are not files to upload.
                if path.is_file() and self._allowed(path, container):
                    found.append(Upload(path, container, _join(url_top, relative)))
        # Sorted by path, so that reports list a tree the same way on every run.
        self.uploads.extend(sorted(found, key=lambda upload: upload.container_path))

    def _allowed(self, path: Path, container: str) -> bool:
        if self.root is None:
            return True
        try:
            if path.resolve().is_relative_to(self.root):
                return True
        except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop
            pass
        self.notes.append(
            f"output {container} leads outside the task's work volume (a "
            "symbolic link?); not uploaded"
        )
        return False

    def _strip(self, container: str, prefix: str) -> str:
        if container.startswith(prefix):
            relative = container[len(prefix) :].lstrip("/")
        else:
            self.notes.append(
                f"path_prefix {prefix} does not start {container}; the whole "
                "path is used in its URL"
            )
            relative = container.lstrip("/")
        return relative or container.rsplit("/", 1)[-1]
