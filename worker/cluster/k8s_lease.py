"""Lease decisions for the watcher's election (coordination.k8s.io/v1; pure).

The API calls live in ``worker.cluster.kubernetes``; this module only decides, from the Lease as
read, what to write: create it, renew it, take it over, or leave it to its holder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Json = dict[str, Any]


def microtime(moment: datetime) -> str:
    """Return ``moment`` as a Kubernetes MicroTime (RFC 3339, UTC, six fraction digits)."""
    moment = moment.astimezone(UTC)
    if moment.microsecond == 0:
        # The Python client turns our string into a datetime and prints it again with
        # isoformat(), which drops a zero fraction; the API server's MicroTime parser then
        # refuses the value. One microsecond later is the same instant for a lease.
        moment = moment + timedelta(microseconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any) -> datetime | None:
    """Return the instant of an RFC 3339 timestamp, or None if absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Plan:
    """What to do with a Lease: write ``body`` (create or replace), or nothing."""

    action: Literal["create", "replace", "refuse"]
    body: Json | None = None


def new_lease(name: str, identity: str, duration_seconds: int, now: datetime) -> Json:
    """Return a Lease held by ``identity`` from ``now``."""
    stamp = microtime(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "kueue-tes"}},
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0,
        },
    }


def expired(spec: Json, now: datetime) -> bool:
    """Tell whether the holder of ``spec`` has let its lease run out (or nobody holds it)."""
    if not spec.get("holderIdentity"):
        return True
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    if renewed is None:
        return True
    duration = int(spec.get("leaseDurationSeconds") or 0)
    return renewed + timedelta(seconds=duration) < now


def plan(
    current: Json | None, name: str, identity: str, duration_seconds: int, now: datetime
) -> Plan:
    """Decide how ``identity`` acquires or renews the Lease ``current`` (None: absent)."""
    if current is None:
        return Plan("create", new_lease(name, identity, duration_seconds, now))
    spec = current.get("spec") or {}
    body = _writable(current)
    out = body["spec"]
    stamp = microtime(now)
    if spec.get("holderIdentity") == identity:
        out.update(renewTime=stamp, leaseDurationSeconds=duration_seconds)
        out.setdefault("acquireTime", stamp)
        return Plan("replace", body)
    if not expired(spec, now):
        return Plan("refuse")
    out.update(
        holderIdentity=identity,
        leaseDurationSeconds=duration_seconds,
        acquireTime=stamp,
        renewTime=stamp,
        leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1,
    )
    return Plan("replace", body)


def released(current: Json, identity: str, now: datetime) -> Json | None:
    """Return the Lease given up by ``identity``, or None if someone else holds it."""
    spec = current.get("spec") or {}
    if spec.get("holderIdentity") != identity:
        return None
    body = _writable(current)
    # As client-go releases: no holder and a one-second lease, so any candidate takes over now.
    body["spec"].pop("holderIdentity", None)
    body["spec"].update(renewTime=microtime(now), leaseDurationSeconds=1)
    return body


def _writable(current: Json) -> Json:
    """Return a copy of the Lease to PUT back: its resourceVersion guards against races."""
    meta = current.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "resourceVersion", "labels") if k in meta}
    body: Json = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": kept,
        "spec": copy.deepcopy(current.get("spec") or {}),
    }
    for key in ("acquireTime", "renewTime"):
        moment = parse_time(body["spec"].get(key))
        if moment is not None:
            body["spec"][key] = microtime(moment)  # re-printed, so a zero fraction survives
    return body
