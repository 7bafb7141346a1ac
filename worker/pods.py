"""Which of a task's pods is the current one (pure; issue 9, item 5).

A task's Job has one pod at a time only in the steady state. Around a re-admission the old pod
is still terminating while the Job controller creates the new one, and the watch streams report
the two in any order: the new pod's ADDED can come before the old pod's last MODIFIED and its
DELETED. The watcher therefore keeps every live pod of a task, keyed by uid (a deletion names
the pod only, so it removes by name), and asks :func:`current` which one the task's attempt is
about: never a pod of an ended attempt, else the attempt's own pod while it is active, else the
newest active pod, else (a pod that has ended, whose verdict is still to be read) the attempt's
own or the newest.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

from worker import states

Json = dict[str, Any]
_ENDED = ("Succeeded", "Failed")


def _meta(pod: Json) -> Json:
    meta = pod.get("metadata")
    return meta if isinstance(meta, dict) else {}


def name(pod: Json | None) -> str | None:
    """Return a pod's name, or None."""
    return None if pod is None else _meta(pod).get("name")


def key(pod: Json) -> str:
    """Return the key a pod is kept under: its uid, else (objects without one) its name."""
    meta = _meta(pod)
    return str(meta.get("uid") or meta.get("name") or "")


def seen(pods: Mapping[str, Json], pod_name: str, obj: Json | None) -> dict[str, Json]:
    """Return ``pods`` after an observation of the pod ``pod_name`` (``obj`` None: deleted)."""
    if obj is None:
        return {k: p for k, p in pods.items() if name(p) != pod_name}
    return {**pods, key(obj): obj}


def active(pod: Json) -> bool:
    """Tell whether a pod is neither ended nor being deleted: it is, or will be, running."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in _ENDED and not _meta(pod).get("deletionTimestamp")


def _newest(pods: list[Json]) -> Json | None:
    # creationTimestamp has a resolution of seconds: the name breaks a tie, the same each time.
    order = [(str(_meta(p).get("creationTimestamp") or ""), name(p) or "", p) for p in pods]
    return max(order, key=lambda item: item[:2])[2] if order else None


def current(
    pods: Mapping[str, Json], attempt_pod: str | None = None, old: Collection[str] = ()
) -> Json | None:
    """Return the pod the task's current attempt is about, or None.

    ``attempt_pod`` is the pod the attempt's metadata names, ``old`` the pods of ended attempts.
    """
    candidates = [p for p in pods.values() if name(p) not in old]
    running = [p for p in candidates if active(p)]
    for group in (running, candidates):
        own = [p for p in group if attempt_pod is not None and name(p) == attempt_pod]
        if own or group:
            return own[0] if own else _newest(group)
    return None


def _live(objects: states.Objects) -> Mapping[str, Json]:
    pod = objects.pod
    return objects.pods or ({key(pod): pod} if pod is not None else {})


def observed(objects: states.Objects, pod_name: str, obj: Json | None) -> states.Objects:
    """Return ``objects`` after an observation of one pod; ``pod`` becomes the likeliest."""
    live = seen(_live(objects), pod_name, obj)
    return replace(objects, pods=live, pod=current(live))


def ended_attempts(attempts: list[Json]) -> set[str]:
    """Return the pods of ended attempts: the earlier ones, and the last if it was evicted."""
    metas = [a.get("metadata") or {} for a in attempts]
    return {
        m["pod"]
        for i, m in enumerate(metas)
        if "pod" in m and (m.get("evicted") or i + 1 < len(metas))
    }


def for_attempt(objects: states.Objects, attempts: list[Json]) -> states.Objects:
    """Return ``objects`` with ``pod`` the one the last of ``attempts`` is about (or None)."""
    mine = (attempts[-1].get("metadata") or {}).get("pod") if attempts else None
    return replace(objects, pod=current(_live(objects), mine, ended_attempts(attempts)))
