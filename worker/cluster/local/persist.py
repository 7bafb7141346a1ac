"""The local runtime's objects on disk, so that a restarted server finds its tasks again."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.cluster.local import podstatus

logger = logging.getLogger(__name__)

KINDS = ("job", "configmap", "workload", "pod")


@dataclass
class Record:
    """One task's objects as a previous process left them."""

    task_id: str
    seq: int
    objects: dict[str, dict[str, Any]]


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
