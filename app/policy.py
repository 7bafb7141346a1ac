"""What a task may ask of Kueue: backend_parameters, preemptible and zones within the policy.

Pure. The API checks a task with :func:`check` when it is created; the worker turns the stored
task into a :class:`Placement` with :func:`placement` when it builds the Job, so both read the
same rules (docs/kueue.md). This module imports nothing from ``worker`` (design section 3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.models import TaskIn
from app.settings import Settings

#: The node label Kueue's flavors and the scheduler use for zones.
ZONE_LABEL = "topology.kubernetes.io/zone"
#: A Kubernetes label value is at most this long.
MAX_LABEL = 63

# A Kueue object name used as a label value: DNS-1123 and at most 63 characters.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_COUNT = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class InvalidTask(Exception):
    """A CreateTask body the client must change: ``field`` says where, ``message`` what."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Placement:
    """What the worker asks of Kueue and the scheduler for one task."""

    queue: str
    priority_class: str | None = None
    gpus: int = 0
    gpu_resource: str | None = None
    max_run_seconds: int | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    zones: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Envelope:
    """What one principal may ask of Kueue: the global policy, or a route's (app.routing)."""

    queue: str  # the LocalQueue of tasks that name none
    queues: tuple[str, ...] = ()  # LocalQueues it may name besides that one; empty: any
    priority_classes: tuple[str, ...] = ()  # empty: any
    gpu_kinds: Mapping[str, str] = field(default_factory=dict)  # gpu_type → extended resource
    default_gpu_type: str | None = None
    max_gpus: int = 0
    max_run_seconds: int | None = None
    route: str | None = None  # which route this is, for messages; None: the global policy

    @classmethod
    def from_settings(cls, settings: Settings) -> Envelope:
        """Return the global policy of the KUEUE_TES_* settings as an envelope."""
        return cls(
            queue=settings.default_queue,
            queues=tuple(settings.allowed_queues),
            priority_classes=tuple(settings.allowed_priority_classes),
            gpu_kinds=gpu_kinds(settings),
            default_gpu_type=default_gpu_type(settings),
            max_gpus=settings.max_gpus,
            max_run_seconds=settings.max_run_seconds,
        )

    def to_whom(self) -> str:
        """Return `` to <route>`` for messages about a route, else nothing."""
        return f" to {self.route}" if self.route else ""

    def routed(
        self, kept: dict[str, str], settings: Settings, preemptible: bool = False
    ) -> dict[str, str]:
        """Add what the worker must know of this envelope to the kept parameters.

        The worker reads only the stored task and the global settings (worker/jobspec.py),
        so a route's default queue and run-time cap travel in the task's backend_parameters,
        whether or not KUEUE_TES_BACKEND_PARAMETERS lets tasks name those keys themselves.
        A preemptible task goes to KUEUE_TES_PREEMPTIBLE_QUEUE, where that is set.
        """
        out = dict(kept)
        spot = preemptible and settings.preemptible_queue
        if "queue" not in out and self.queue != settings.default_queue and not spot:
            out["queue"] = self.queue
        cap = self.max_run_seconds
        if "max_run_seconds" not in out and cap is not None and cap != settings.max_run_seconds:
            out["max_run_seconds"] = str(cap)
        return out


def pairs(items: Iterable[str]) -> dict[str, str]:
    """Turn ``key=value`` items (a list setting) into a mapping."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def gpu_kinds(settings: Settings) -> dict[str, str]:
    """Return the GPU kinds on offer: ``gpu_type`` name → extended resource name."""
    return pairs(settings.gpu_resources)


def default_gpu_type(settings: Settings) -> str | None:
    """Return the GPU kind of tasks that ask for GPUs but name no kind."""
    kinds = gpu_kinds(settings)
    return settings.default_gpu_type or next(iter(kinds), None)


def is_name(value: str) -> bool:
    """Tell whether ``value`` can name a LocalQueue or WorkloadPriorityClass in a label."""
    return len(value) <= MAX_LABEL and _NAME.fullmatch(value) is not None


def is_label_value(value: str) -> bool:
    """Tell whether ``value`` is a non-empty Kubernetes label value."""
    return len(value) <= MAX_LABEL and _LABEL_VALUE.fullmatch(value) is not None


def _count(value: str) -> int | None:
    return int(value) if _COUNT.fullmatch(value) else None


def _one_of(what: str, value: str, allowed: Iterable[str]) -> str:
    offered = ", ".join(sorted(allowed)) or "none"
    return f"{what} '{value}' is not offered here; choose one of: {offered}"


def _name_problem(what: str, value: str, allowed: Sequence[str]) -> str | None:
    if not is_name(value):
        return (
            f"'{value}' is not a {what} name (lowercase letters, digits, '-' and '.', "
            f"at most {MAX_LABEL} characters)"
        )
    if allowed and value not in allowed:
        return _one_of(what, value, allowed)
    return None


def _problem(key: str, value: str, params: Mapping[str, str], env: Envelope) -> str | None:
    """Return why one backend parameter is outside the envelope, or None when it is within."""
    if key == "queue":
        if value == env.queue:  # one's own default queue is always allowed
            return None
        return _name_problem("LocalQueue", value, env.queues)
    if key == "priority_class":
        return _name_problem("WorkloadPriorityClass", value, env.priority_classes)
    if key == "gpus":
        count = _count(value)
        if count is None:
            return f"'{value}' is not a whole number of GPUs"
        if count > env.max_gpus:
            return f"{count} GPUs is over the limit of {env.max_gpus} per task"
        if count and not env.gpu_kinds:
            return "this service offers no GPUs" + env.to_whom()
        if count and "gpu_type" not in params and env.default_gpu_type not in env.gpu_kinds:
            return "this service names no default GPU kind; give gpu_type"
        return None
    if key == "gpu_type":
        return None if value in env.gpu_kinds else _one_of("GPU kind", value, env.gpu_kinds)
    if key == "max_run_seconds":
        seconds = _count(value)
        if not seconds:
            return f"'{value}' is not a positive whole number of seconds"
        cap = env.max_run_seconds
        if cap is not None and seconds > cap:
            return f"{seconds} seconds is over the limit of {cap}"
        return None
    return None


def _canonical(key: str, value: str) -> str:
    return str(int(value)) if key in ("gpus", "max_run_seconds") else value


def check(
    task: TaskIn, settings: Settings, honoured: Sequence[str], envelope: Envelope | None = None
) -> tuple[dict[str, str], list[str]]:
    """Return the task's backend parameters within the envelope, and system logs for the rest.

    ``envelope`` is what the caller may ask for (app.routing); default: the global policy.
    Raises InvalidTask for the first key outside it when backend_parameters_strict.
    """
    env = envelope or Envelope.from_settings(settings)
    resources = task.resources
    if resources is None:
        return env.routed({}, settings), []
    params = dict(resources.backend_parameters or {})
    strict = bool(resources.backend_parameters_strict)
    listed = ", ".join(honoured) or "none"
    kept: dict[str, str] = {}
    notes: list[str] = []
    for key in sorted(params):
        if key not in honoured:
            reason = f"this service honours {listed}"
            if strict:
                reason = (
                    "this service does not honour it (backend_parameters_strict is set); "
                    f"it honours: {listed}"
                )
        else:
            problem = _problem(key, params[key], params, env)
            if problem is None:
                kept[key] = _canonical(key, params[key])
                continue
            reason = problem + (" (backend_parameters_strict is set)" if strict else "")
        if strict:
            raise InvalidTask(f"resources.backend_parameters.{key}", reason)
        notes.append(f"backend parameter '{key}' was ignored: {reason}")
    preemptible = bool(resources.preemptible)
    spot = settings.preemptible_queue if preemptible else None
    if spot and kept.get("queue", spot) != spot:
        # Any other queue may admit the task on capacity that is not preemptible (docs/kueue.md).
        reason = f"preemptible tasks run in LocalQueue {spot}"
        if strict:
            raise InvalidTask("resources.backend_parameters.queue", f"{reason}; drop one of them")
        notes.append(f"backend parameter 'queue' was ignored: {reason}")
        del kept["queue"]
    notes.extend(_hint_notes(resources.preemptible, resources.zones, settings))
    ordered = {key: kept[key] for key in params if key in kept}
    return env.routed(ordered, settings, preemptible), notes


def _hint_notes(preemptible: bool | None, zones: list[str] | None, settings: Settings) -> list[str]:
    notes = []
    if preemptible and not (
        settings.preemptible_priority_class
        or settings.preemptible_node_selector
        or settings.preemptible_queue
    ):
        notes.append("preemptible was ignored: this service has no preemptible capacity configured")
    for zone in zones or ():
        if not is_label_value(zone):
            notes.append(f"zone '{zone}' was ignored: it is not a valid zone label value")
    return notes


def valid_zones(zones: Iterable[Any] | None) -> list[str]:
    """Return the zones that can be node label values, once each, in the order given."""
    out: list[str] = []
    for zone in zones or ():
        if isinstance(zone, str) and is_label_value(zone) and zone not in out:
            out.append(zone)
    return out


def _stored_count(params: Mapping[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    count = _count(str(value))
    if count is None:
        raise ValueError(f"backend parameter {key}={value!r} is not a whole number")
    return count


def local_queue(resources: Mapping[str, Any] | None, settings: Settings) -> str:
    """Return the LocalQueue of a checked task: the preemptible queue, the one it names (or its
    route put there), else the default."""
    resources = resources or {}
    params: Mapping[str, Any] = resources.get("backend_parameters") or {}
    spot = settings.preemptible_queue if resources.get("preemptible") else None
    return str(spot or params.get("queue") or settings.default_queue)


def placement(resources: Mapping[str, Any] | None, settings: Settings) -> Placement:
    """Return what a stored (already checked) task asks of Kueue under the current settings.

    Raises ValueError when the task asks for something the settings no longer offer.
    """
    resources = resources or {}
    params: Mapping[str, Any] = resources.get("backend_parameters") or {}
    preemptible = bool(resources.get("preemptible"))
    priority_class = params.get("priority_class") or None
    if priority_class is None and preemptible:
        priority_class = settings.preemptible_priority_class
    gpus = _stored_count(params, "gpus") or 0
    gpu_resource = None
    if gpus:
        kind = params.get("gpu_type") or default_gpu_type(settings)
        gpu_resource = gpu_kinds(settings).get(kind or "")
        if gpu_resource is None:
            raise ValueError(f"GPU kind {kind!r} is not offered by this service (any longer)")
    max_run = _stored_count(params, "max_run_seconds")
    cap = settings.max_run_seconds
    if cap is not None:
        max_run = min(max_run or cap, cap)
    return Placement(
        queue=local_queue(resources, settings),
        priority_class=priority_class,
        gpus=gpus,
        gpu_resource=gpu_resource,
        max_run_seconds=max_run,
        node_selector=pairs(settings.preemptible_node_selector) if preemptible else {},
        zones=valid_zones(resources.get("zones")),
    )
