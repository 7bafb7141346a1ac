"""The local runtime's objects on disk, so that a restarted server finds its tasks again."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from worker.cluster.base import PermanentError
from worker.cluster.local import podstatus

logger = logging.getLogger(__name__)

KINDS = ("job", "configmap", "workload", "pod")


@dataclass
class Record:
    """One task's objects as a previous process left them."""

    task_id: str
    seq: int
    objects: dict[str, dict[str, Any]]


def lock(directory: Path, what: str) -> TextIO:
    """Hold ``directory``'s lock file while the handle stays open; else raise PermanentError.

    ``what`` says what the directory is to this process ("uses the image cache"): two servers
    on one data directory would run the same tasks twice.
    """
    handle = (directory / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise PermanentError(
            f"another kueue-tes process {what} in {directory}; run one `kueue-tes serve` per "
            "data directory"
        ) from exc
    return handle


def save(directory: Path, task_id: str, seq: int, what: str, obj: dict[str, Any]) -> None:
    """Write one object atomically as ``<directory>/<what>.json``."""
    directory.mkdir(exist_ok=True)
    tmp = directory / f".{what}.json"
    tmp.write_text(json.dumps({"task_id": task_id, "seq": seq, "object": obj}))
    tmp.replace(directory / f"{what}.json")


def load(root: Path) -> list[Record]:
    """Return every task's objects under ``root``, in arrival order; skip unreadable ones."""
    records: list[Record] = []
    for job_file in sorted(root.glob("*/job.json")):
        try:
            found = {
                what: json.loads((job_file.parent / f"{what}.json").read_text())
                for what in KINDS
                if what != "pod" or (job_file.parent / "pod.json").exists()
            }
            job = found["job"]
            objects = {what: record["object"] for what, record in found.items()}
            records.append(Record(str(job["task_id"]), int(job["seq"]), objects))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable local runtime state in %s: %s", job_file, exc)
    return sorted(records, key=lambda record: record.seq)


def orphan(pod: dict[str, Any]) -> None:
    """Fail a pod whose processes ended with the previous kueue-tes process."""
    status = pod.setdefault("status", {})
    status.update(
        phase="Failed",
        reason="LocalRuntimeRestarted",
        message="the local runtime restarted while this pod ran; its processes ended with it",
    )
    for entry in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        running = entry.get("state", {}).get("running")
        if running is not None:
            entry["state"] = podstatus.terminated(137, running["startedAt"])
            entry["ready"] = entry["started"] = False


def read_log(path: Path, limit_bytes: int | None) -> str:
    """Return the last ``limit_bytes`` of a container's log file, or ""."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if limit_bytes is not None and size > limit_bytes:
                handle.seek(size - limit_bytes)
            data: bytes = handle.read()
    except OSError:
        return ""
    if limit_bytes is not None and size > limit_bytes:
        data = data.lstrip(bytes(range(0x80, 0xC0)))  # no torn UTF-8 sequence up front
    return data.decode("utf-8", "replace")


def remove(path: Path) -> None:
    """Delete a task's files, read-only directories it left behind included."""
    shutil.rmtree(path, onerror=_make_writable)


def _make_writable(function: Any, path: str, _exc: Any) -> None:
    # A task may leave read-only directories behind; the owner can always chmod them.
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        function(path)
