"""The task pod's layout as cluster objects show it, and what follows from it (pure).

``ready``: executors are main containers that take turns (docs/task-pod.md), so container
states say nothing about progress until the end: the sequencer's report does. ``init``:
executors are init containers, so the pod is not Ready before the last one has ended, which
Kueue's ``waitForPodsReady`` punishes with ``PodsReadyTimeout`` evictions.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

#: The Workload ``Evicted`` reason Kueue writes when pods are not Ready in time (v0.15 to v0.19:
#: message ``Exceeded the PodsReady timeout <namespace>/<workload>``).
PODS_READY_TIMEOUT = "PodsReadyTimeout"
_NOT_DEVICES = frozenset({"cpu", "memory", "ephemeral-storage"})


def pod_spec(*objects: Json | None) -> Json:
    """Return the pod spec of the first of a Pod, a Job or a Workload that has one."""
    for obj in objects:
        spec = (obj or {}).get("spec") or {}
        found = [spec, (spec.get("template") or {}).get("spec") or {}]
        found += [(s.get("template") or {}).get("spec") or {} for s in spec.get("podSets") or ()]
        for candidate in found:
            if candidate.get("containers") or candidate.get("initContainers"):
                return dict(candidate)
    return {}


def _executors(spec: Json) -> list[Json]:
    containers = [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]
    return [c for c in containers if str(c.get("name", "")).startswith("executor-")]


def ready(*objects: Json | None) -> bool:
    """Tell whether the task pod runs its executors as main containers (the ready layout)."""
    main = pod_spec(*objects).get("containers") or ()
    return any(str(c.get("name", "")).startswith("executor-") for c in main)


def _shared_devices(spec: Json) -> bool:
    executors = _executors(spec)
    devices = {
        name
        for container in executors
        for name in ((container.get("resources") or {}).get("limits") or {})
        if name not in _NOT_DEVICES
    }
    return len(executors) > 1 and bool(devices)


def pods_ready_timeout(why: str, *objects: Json | None) -> str:
    """Return the system log of a PodsReadyTimeout eviction: what ended it, and what to change."""
    spec = pod_spec(*objects)
    if ready(*objects) or not spec:  # (no spec at hand: nothing more can be said)
        return (
            f"evicted by Kueue ({why}): the task pod was not Ready within the cluster's "
            "waitForPodsReady timeout (its images may be slow to pull, or no node could take "
            "it); the task waits to run again; if this repeats, the operator can raise "
            "waitForPodsReady.timeout in Kueue's configuration"
        )
    if _shared_devices(spec):
        cause = "it has several executors that share GPUs, which only init containers can"
        user = "; a user can give each executor that needs GPUs a task of its own"
        layout = ""
    else:
        cause = "the operator set KUEUE_TES_POD_LAYOUT=init"
        user, layout = "", ", or set KUEUE_TES_POD_LAYOUT=ready"
    return (
        f"evicted by Kueue ({why}): the cluster's waitForPodsReady timeout ended this attempt: "
        f"this task's executors run as init containers ({cause}), so its pod is Ready only "
        "once the last executor has ended, and every attempt that runs longer than the timeout "
        "ends the same way; the operator can raise waitForPodsReady.timeout and recoveryTimeout "
        f"in Kueue's configuration above the task's run time{layout}{user}; the task waits to "
        "run again"
    )
