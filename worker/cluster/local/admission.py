"""Kueue's admission, reduced to one ClusterQueue with one flavor and StrictFIFO (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.cluster.local import quantity

#: Names the local runtime reports in Kueue-shaped messages.
CLUSTER_QUEUE = "local"
FLAVOR = "local"
POD_SET = "main"

#: Resources the local quota covers; cpu is counted in millicores, the rest in whole units.
COVERED = ("cpu", "memory")
#: Requested but neither counted nor enforced locally (the operator's disk is the limit).
IGNORED = frozenset({"ephemeral-storage", "pods"})

Requests = dict[str, int]


def _amount(resource: str, value: Any) -> int:
    amount = quantity.milli(value) if resource == "cpu" else quantity.units(value)
    if amount < 0:
        raise ValueError(f"{resource} quantity {value!r} must not be negative")
    return amount


def container_requests(container: Mapping[str, Any]) -> Requests:
    """Return one container's requests; a resource with only a limit requests its limit."""
    resources = container.get("resources") or {}
    # The API server defaults a missing request to the limit; Kueue counts the result.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: _amount(name, value) for name, value in merged.items()}


def _add(total: Requests, more: Mapping[str, int]) -> Requests:
    out = dict(total)
    for name, value in more.items():
        out[name] = out.get(name, 0) + value
    return out


def _max(left: Mapping[str, int], right: Mapping[str, int]) -> Requests:
    return {name: max(left.get(name, 0), right.get(name, 0)) for name in {*left, *right}}


def pod_requests(pod_spec: Mapping[str, Any]) -> Requests:
    """Return a pod's effective requests by Kubernetes' rule for init containers and sidecars."""
    sidecars: Requests = {}
    init_peak: Requests = {}
    for container in pod_spec.get("initContainers") or []:
        own = container_requests(container)
        if container.get("restartPolicy") == "Always":
            # A native sidecar keeps running: it adds to everything that starts after it.
            sidecars = _add(sidecars, own)
            init_peak = _max(init_peak, sidecars)
        else:
            init_peak = _max(init_peak, _add(own, sidecars))
    main = dict(sidecars)
    for container in pod_spec.get("containers") or []:
        main = _add(main, container_requests(container))
    return {name: value for name, value in _max(init_peak, main).items() if value}


def format_amount(resource: str, amount: int) -> str:
    """Print an amount the way Kueue prints it in its messages."""
    if resource == "cpu":
        return quantity.format_cpu(amount)
    if resource == "memory":
        return quantity.format_bytes(amount)
    return str(amount)


@dataclass(frozen=True)
class Candidate:
    """One pending Workload in arrival order."""

    name: str
    requests: Mapping[str, int]


@dataclass
class Decision:
    """What one scheduling pass decided: who is admitted, and why the others wait."""

    admitted: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)


def never_fits(requests: Mapping[str, int], quota: Mapping[str, int]) -> str | None:
    """Return Kueue's reason why a request can never fit the quota, or None."""
    reasons = [
        f"resource {name} unavailable in ClusterQueue"
        for name in sorted(requests)
        if name not in COVERED and name not in IGNORED and requests[name] > 0
    ]
    for name in COVERED:
        want, most = requests.get(name, 0), quota.get(name, 0)
        if want > most:
            reasons.append(
                f"insufficient quota for {name} in flavor {FLAVOR}, request > maximum capacity "
                f"({format_amount(name, want)} > {format_amount(name, most)})"
            )
    return ", ".join(reasons) or None


def shortfall(requests: Mapping[str, int], free: Mapping[str, int]) -> str | None:
    """Return Kueue's "insufficient unused quota" reason, or None when the request fits."""
    reasons = [
        f"insufficient unused quota for {name} in flavor {FLAVOR}, "
        f"{format_amount(name, requests.get(name, 0) - free.get(name, 0))} more needed"
        for name in COVERED
        if requests.get(name, 0) > free.get(name, 0)
    ]
    return ", ".join(reasons) or None


def _message(reason: str) -> str:
    return f"couldn't assign flavors to pod set {POD_SET}: {reason}"


def schedule(
    queue: Sequence[Candidate], used: Iterable[Mapping[str, int]], quota: Mapping[str, int]
) -> Decision:
    """Admit the queue's head while it fits the free quota (StrictFIFO); explain the rest."""
    free = dict(quota)
    for usage in used:
        for name in COVERED:
            free[name] = free.get(name, 0) - usage.get(name, 0)
    decision = Decision()
    head: str | None = None
    for candidate in queue:
        impossible = never_fits(candidate.requests, quota)
        if impossible is not None:
            # Kueue would let it block the queue forever; one machine cannot afford that.
            decision.pending[candidate.name] = _message(impossible)
            continue
        missing = shortfall(candidate.requests, free)
        if head is None and missing is None:
            decision.admitted.append(candidate.name)
            for name in COVERED:
                free[name] -= candidate.requests.get(name, 0)
            continue
        if missing is not None:
            decision.pending[candidate.name] = _message(missing)
        else:
            decision.pending[candidate.name] = (
                f"waiting for workload {head} ahead of it in ClusterQueue {CLUSTER_QUEUE} "
                "(StrictFIFO admits in arrival order)"
            )
        head = head or candidate.name
    return decision
