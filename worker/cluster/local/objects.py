"""The objects the local runtime keeps, shaped as Kubernetes and Kueue return them (pure)."""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from worker.cluster.base import MANAGED_BY, QUEUE_NAME, TASK_ID
from worker.cluster.local import admission, podstatus

#: Where the local runtime says plainly what it does not do.
RUNTIME_NOTE_KEY = "kueue-tes/runtime-note"
RUNTIME_NOTE = (
    "local runtime: images are not pulled; containers run on the host's root file system read-only"
)
READ_ONLY_NOTE = "local runtime: containers run on their images' root file systems read-only"
#: The largest ConfigMap the API server stores.
CONFIGMAP_LIMIT = 1024 * 1024
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the one Kubernetes uses for generated names


def set_condition(
    status: dict[str, Any], kind: str, value: bool, reason: str, message: str
) -> bool:
    """Set a condition (its lastTransitionTime moves only on a flip); tell if it changed."""
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    text = "True" if value else "False"
    for condition in conditions:
        if condition["type"] == kind:
            before = dict(condition)
            if condition["status"] != text:
                condition["lastTransitionTime"] = podstatus.now()
            condition.update(status=text, reason=reason, message=message)
            return before != condition
    conditions.append(
        {
            "type": kind,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": podstatus.now(),
        }
    )
    return True


def condition(obj: Mapping[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """Return an object's condition of one type, or None."""
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return None


def check_job(task_id: str, job: Mapping[str, Any]) -> None:
    """Refuse a Job the API server (or we) would refuse; raise ValueError saying why."""
    if job.get("kind") != "Job" or not (job.get("metadata") or {}).get("name"):
        raise ValueError("the object is not a batch/v1 Job with a metadata.name")
    label = ((job.get("metadata") or {}).get("labels") or {}).get(TASK_ID)
    if label != task_id:
        raise ValueError(f"Job label {TASK_ID}={label!r} does not match task {task_id}")
    spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    names = [c.get("name") for c in containers]
    if not spec.get("containers") or not all(names) or len(set(names)) != len(names):
        raise ValueError("the pod template needs containers, each with a unique name")


def check_configmap(configmap: Mapping[str, Any]) -> None:
    """Refuse a ConfigMap the API server would refuse; raise ValueError saying why."""
    if configmap.get("kind") != "ConfigMap" or not (configmap.get("metadata") or {}).get("name"):
        raise ValueError("the object is not a v1 ConfigMap with a metadata.name")
    size = len(json.dumps(configmap.get("data") or {})) + len(
        json.dumps(configmap.get("binaryData") or {})
    )
    if size > CONFIGMAP_LIMIT:
        raise ValueError(f"ConfigMap is too long: must have at most {CONFIGMAP_LIMIT} bytes")


def _stamp(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    meta.setdefault("namespace", namespace)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = podstatus.now()
    return obj


def _owner(job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def new_configmap(configmap: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """Return the stored ConfigMap."""
    return _stamp({"apiVersion": "v1", **copy.deepcopy(dict(configmap))}, namespace)


def new_job(job: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """Return the stored Job: suspended, as Kueue's webhook leaves every queued Job."""
    stored = _stamp({"apiVersion": "batch/v1", **copy.deepcopy(dict(job))}, namespace)
    stored["spec"]["suspend"] = True
    stored["status"] = {}
    set_condition(stored["status"], "Suspended", True, "JobSuspended", "Job suspended")
    return stored


def new_workload(job: Mapping[str, Any], requests: Mapping[str, int]) -> dict[str, Any]:
    """Return the Workload Kueue would create for a queued Job."""
    meta = job["metadata"]
    digest = hashlib.sha1(f"{meta['name']}/{meta['uid']}".encode()).hexdigest()[:5]
    labels = {"kueue.x-k8s.io/job-uid": meta["uid"]}
    # As with Kueue's labelKeysToCopy set to our labels: the watcher selects Workloads by them.
    for key in (MANAGED_BY, TASK_ID, QUEUE_NAME):
        if key in (meta.get("labels") or {}):
            labels[key] = meta["labels"][key]
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {"name": f"job-{meta['name']}-{digest}", "labels": labels},
        "spec": {
            "queueName": (meta.get("labels") or {}).get(QUEUE_NAME, ""),
            "podSets": [
                {
                    "name": admission.POD_SET,
                    "count": 1,
                    "template": copy.deepcopy(job["spec"]["template"]),
                }
            ],
            "priority": 0,
            "active": True,
        },
        "status": {
            "resourceRequests": [{"name": admission.POD_SET, "resources": _usage(requests)}]
        },
    }
    _stamp(workload, meta["namespace"])["metadata"]["ownerReferences"] = [_owner(job)]
    return workload


def _usage(requests: Mapping[str, int]) -> dict[str, str]:
    return {name: admission.format_amount(name, value) for name, value in sorted(requests.items())}


def workload_pending(workload: dict[str, Any], message: str) -> bool:
    """Record why a Workload waits; tell whether anything changed."""
    status = workload["status"]
    changed = set_condition(status, "QuotaReserved", False, "Pending", message)
    no_reservation = "The workload has no reservation"
    return set_condition(status, "Admitted", False, "NoReservation", no_reservation) or changed


def runtime_note(pulls: bool, read_only_why: str = "") -> str:
    """Return what the runtime says of itself in pods and Workloads ("" when it runs images)."""
    if not pulls:
        return RUNTIME_NOTE
    return f"{READ_ONLY_NOTE}: {read_only_why}" if read_only_why else ""


def workload_admitted(
    workload: dict[str, Any], requests: Mapping[str, int], note: str = RUNTIME_NOTE
) -> None:
    """Record a Workload's admission to the local ClusterQueue (``note``: runtime_note())."""
    status = workload["status"]
    status["admission"] = {
        "clusterQueue": admission.CLUSTER_QUEUE,
        "podSetAssignments": [
            {
                "name": admission.POD_SET,
                "flavors": {name: admission.FLAVOR for name in admission.COVERED},
                "resourceUsage": _usage(requests),
                "count": 1,
            }
        ],
    }
    reserved = f"Quota reserved in ClusterQueue {admission.CLUSTER_QUEUE}"
    set_condition(status, "QuotaReserved", True, "QuotaReserved", reserved)
    admitted = "The workload is admitted" + (f"; {note}" if note else "")
    set_condition(status, "Admitted", True, "Admitted", admitted)


def workload_finished(workload: dict[str, Any], succeeded: bool, message: str) -> None:
    """Record that a Workload's Job finished."""
    reason = "Succeeded" if succeeded else "Failed"
    set_condition(workload["status"], "Finished", True, reason, message)


def job_resumed(job: dict[str, Any]) -> None:
    """Unsuspend a Job, as Kueue does on admission, and start its clock."""
    job["spec"]["suspend"] = False
    status = job["status"]
    set_condition(status, "Suspended", False, "JobResumed", "Job resumed")
    status.update(startTime=podstatus.now(), active=1, ready=0, terminating=0)


def job_follows_pod(job: dict[str, Any], pod_status: Mapping[str, Any]) -> None:
    """Update a running Job's counters from its pod's status."""
    ready = condition({"status": pod_status}, "Ready")
    job["status"]["ready"] = 1 if ready and ready["status"] == "True" else 0


def job_finished(job: dict[str, Any], succeeded: bool, reason: str, message: str) -> None:
    """Record a Job's end the way the Job controller does."""
    status = job["status"]
    status.update(active=0, ready=0)
    if succeeded:
        status["succeeded"] = 1
        set_condition(status, "SuccessCriteriaMet", True, reason, message)
        set_condition(status, "Complete", True, reason, message)
        status["completionTime"] = podstatus.now()
    else:
        status["failed"] = 1
        set_condition(status, "FailureTarget", True, reason, message)
        set_condition(status, "Failed", True, reason, message)


def new_pod(job: Mapping[str, Any], note: str = RUNTIME_NOTE) -> dict[str, Any]:
    """Return the Pod the Job controller creates from the Job's template."""
    template = copy.deepcopy(job["spec"]["template"])
    meta = job["metadata"]
    suffix = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels.update(
        {
            "batch.kubernetes.io/controller-uid": meta["uid"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": meta["uid"],
            "job-name": meta["name"],
        }
    )
    annotations = dict((template.get("metadata") or {}).get("annotations") or {})
    if note:
        annotations[RUNTIME_NOTE_KEY] = note
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{suffix}",
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [_owner(job)],
        },
        "spec": {**template.get("spec", {}), "nodeName": "local"},
        "status": {"phase": "Pending"},
    }
    return _stamp(pod, meta["namespace"])
