"""Pod, container and condition status in the shapes Kubernetes reports them (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: What kubelet keeps of a termination message, and of the log when it falls back to it.
MESSAGE_LIMIT = 4096
FALLBACK_BYTES = 2048
FALLBACK_LINES = 80


def now() -> str:
    """Return the current time as Kubernetes prints it (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    """One container's status as kubelet tracks it."""

    name: str
    image: str
    state: dict[str, Any]
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    last_state: dict[str, Any] = field(default_factory=dict)
    container_id: str = ""
    image_id: str = ""  # the repo digest the image resolved to, once pulled

    def render(self) -> dict[str, Any]:
        """Return the ``containerStatuses`` entry."""
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out

    def running(self) -> bool:
        """Tell whether the container is running now."""
        return "running" in self.state

    def exit_code(self) -> int | None:
        """Return the exit code once terminated."""
        terminated = self.state.get("terminated")
        return None if terminated is None else int(terminated["exitCode"])


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    """Return a ``waiting`` state."""
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def running(started_at: str) -> dict[str, Any]:
    """Return a ``running`` state."""
    return {"running": {"startedAt": started_at}}


def terminated(
    exit_code: int, started_at: str, message: str = "", reason: str | None = None
) -> dict[str, Any]:
    """Return a ``terminated`` state; the reason follows the exit code unless given."""
    body: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": now(),
    }
    if message:
        body["message"] = message
    return {"terminated": body}


def termination_message(written: bytes, log_tail: bytes, exit_code: int, policy: str) -> str:
    """Return the message kubelet reports: the file, or the log's tail when the policy says so."""
    text = written[:MESSAGE_LIMIT]
    if not text.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        lines = log_tail[-FALLBACK_BYTES:].splitlines(keepends=True)[-FALLBACK_LINES:]
        text = b"".join(lines)
    return text.decode("utf-8", "replace")


@dataclass
class Conditions:
    """Pod conditions, remembering when each last changed."""

    changed: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def entry(self, kind: str, status: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        """Return one condition, keeping its lastTransitionTime while its status holds."""
        before = self.changed.get(kind)
        if before is None or before[0] != status:
            before = (status, now())
            self.changed[kind] = before
        out: dict[str, Any] = {
            "type": kind,
            "status": "True" if status else "False",
            "lastProbeTime": None,
            "lastTransitionTime": before[1],
        }
        if reason:
            out["reason"] = reason
        if message:
            out["message"] = message
        return out


def pod_conditions(
    memo: Conditions,
    phase: str,
    sandbox_ready: bool,
    init: Sequence[ContainerState],
    sidecars: frozenset[str],
    main: Sequence[ContainerState],
    initialized: bool,
) -> list[dict[str, Any]]:
    """Return a pod's conditions from its containers, as kubelet derives them."""
    # Once the main containers started, Initialized stays true, as kubelet keeps it.
    incomplete = [
        c.name
        for c in init
        if not initialized
        and (
            (c.name in sidecars and not c.started)
            or (c.name not in sidecars and c.exit_code() != 0)
        )
    ]
    unready = [c.name for c in main if not c.ready] + [
        c.name for c in init if c.name in sidecars and not c.ready
    ]
    done = phase in {"Succeeded", "Failed"}
    out = [
        memo.entry("PodReadyToStartContainers", sandbox_ready),
        memo.entry(
            "Initialized",
            not incomplete,
            "" if not incomplete else "ContainersNotInitialized",
            ""
            if not incomplete
            else f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
    ]
    for kind in ("Ready", "ContainersReady"):
        if done:
            out.append(memo.entry(kind, False, "PodCompleted"))
        elif unready:
            message = f"containers with unready status: [{' '.join(unready)}]"
            out.append(memo.entry(kind, False, "ContainersNotReady", message))
        else:
            out.append(memo.entry(kind, True))
    out.append(memo.entry("PodScheduled", True))
    return out


def pod_status(
    phase: str,
    conditions: list[dict[str, Any]],
    start_time: str,
    init: Sequence[ContainerState],
    main: Sequence[ContainerState],
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    """Return a pod's ``status``."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "startTime": start_time,
        "initContainerStatuses": [s.render() for s in init],
        "containerStatuses": [s.render() for s in main],
    }
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status
