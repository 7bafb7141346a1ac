"""The task pod as manifests: task → ConfigMap and suspended Job (pure; design section 7).

See docs/task-pod.md for the contract these manifests carry.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app import policy
from app.policy import Placement
from app.settings import Settings
from worker.cluster.base import MANAGED_BY, QUEUE_NAME, TASK_ID

CONTROL = "/tes"
WORK = "/kueue-tes/work"
TASK_DIR = "/kueue-tes/task"
SEQUENCER_TMP = "/kueue-tes/tmp"
BUSYBOX = f"{CONTROL}/bin/busybox"
RUNNER = f"{CONTROL}/bin/runner.sh"
STAGED = f"{CONTROL}/staged"
PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
MAX_EXEC_TIME = "kueue.x-k8s.io/max-exec-time-seconds"
_WILDCARDS = frozenset("*?[")

#: `finish` waits for the sequencer's verdict and turns it into its exit code.
FINISH_SCRIPT = f"""\
while [ ! -s {CONTROL}/verdict ]; do {BUSYBOX} sleep 0.05; done
case "$({BUSYBOX} cat {CONTROL}/verdict)" in
  COMPLETE) exit 0 ;;
  EXECUTOR_ERROR) exit 1 ;;
  *) exit 2 ;;
esac
"""

Json = dict[str, Any]


@dataclass(frozen=True, order=True)
class Mount:
    """One piece of the work volume that executors mount at ``path``."""

    path: str
    kind: Literal["dir", "file"]

    @property
    def sub_path(self) -> str:
        """Where the piece lives in the work volume."""
        return "fs" + self.path.rstrip("/")


def job_name(task_id: str) -> str:
    """Return the name of a task's Job and ConfigMap."""
    return f"tes-{task_id}"


def _wildcard_dir(path: str) -> str:
    parts = path.split("/")
    for i, part in enumerate(parts):
        if any(c in _WILDCARDS for c in part):
            return "/".join(parts[:i]) or "/"
    return posixpath.dirname(path)


def _norm(path: str) -> str:
    return posixpath.normpath(path)


def plan_mounts(task: Json) -> list[Mount]:
    """Return the work-volume mounts every executor gets, nested paths collapsed."""
    wanted: dict[str, Literal["dir", "file"]] = {}

    def want(path: str, kind: Literal["dir", "file"]) -> None:
        path = _norm(path)
        if wanted.get(path) != "dir":
            wanted[path] = kind

    for item in task.get("inputs", ()):
        want(item["path"], "dir" if item.get("type") == "DIRECTORY" else "file")
    for item in task.get("outputs", ()):
        path = item["path"]
        if any(c in _WILDCARDS for c in path):
            want(_wildcard_dir(path), "dir")
        elif item.get("type") == "DIRECTORY":
            want(path, "dir")
        else:
            want(posixpath.dirname(_norm(path)), "dir")
    for volume in task.get("volumes", ()):
        want(volume, "dir")
    for executor in task.get("executors", ()):
        if executor.get("stdin"):
            want(executor["stdin"], "file")
        for stream in ("stdout", "stderr"):
            if executor.get(stream):
                want(posixpath.dirname(_norm(executor[stream])), "dir")
    if "/" in wanted:
        raise ValueError("a mount at / would hide the image; put files in a directory")
    dirs = sorted(p for p, kind in wanted.items() if kind == "dir")
    kept: list[Mount] = []
    for path in sorted(wanted):
        inside = any(path != d and path.startswith(d.rstrip("/") + "/") for d in dirs)
        if not inside:
            kept.append(Mount(path, wanted[path]))
    return kept


def _mebibytes(gigabytes: float) -> str:
    # TES sizes are in GB; we read them as GiB and round up, so a task never gets less.
    return f"{math.ceil(gigabytes * 1024)}Mi"


def _executor_resources(task: Json, place: Placement) -> Json:
    # Every executor asks for the whole task; executors run one at a time, so the pod counts
    # the largest (design section 7).
    resources = task.get("resources") or {}
    cpu = resources.get("cpu_cores") or 1
    requests: Json = {"cpu": str(cpu)}
    limits: Json = {}
    if resources.get("ram_gb"):
        requests["memory"] = limits["memory"] = _mebibytes(resources["ram_gb"])
    if resources.get("disk_gb"):
        requests["ephemeral-storage"] = _mebibytes(resources["disk_gb"])
    if place.gpus and place.gpu_resource:
        # Extended resources cannot be overcommitted: Kubernetes wants requests == limits.
        requests[place.gpu_resource] = limits[place.gpu_resource] = str(place.gpus)
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


#: Our own containers (setup, sequencer, finish) need no privilege at all.
UNPRIVILEGED: Json = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _ours(settings: Settings) -> Json:
    return {
        "requests": {"cpu": settings.sidecar_cpu, "memory": settings.sidecar_memory},
        "limits": {"memory": settings.sidecar_memory},
    }


def _control_mount() -> Json:
    return {"name": "control", "mountPath": CONTROL}


def runner_command(index: int, executor: Json) -> list[str]:
    """Return the command of executor ``index``: the runner, then the argv exactly."""
    return [
        BUSYBOX, "sh", RUNNER, CONTROL, str(index),
        executor.get("stdin") or "", executor.get("stdout") or "", executor.get("stderr") or "",
        "1" if executor.get("ignore_error") else "0", "--", *executor["command"],
    ]  # fmt: skip


def _executor(
    index: int, executor: Json, task: Json, mounts: list[Mount], place: Placement
) -> Json:
    container: Json = {
        "name": f"executor-{index}",
        "image": executor["image"],
        "command": runner_command(index, executor),
        "resources": _executor_resources(task, place),
        "volumeMounts": [_control_mount()]
        + [{"name": "work", "mountPath": m.path, "subPath": m.sub_path} for m in mounts],
        "terminationMessagePolicy": "File",
    }
    if executor.get("workdir"):
        container["workingDir"] = executor["workdir"]
    if executor.get("env"):
        container["env"] = [{"name": k, "value": v} for k, v in sorted(executor["env"].items())]
    return container


def sequencer_env(settings: Settings, host_env: Mapping[str, str] | None = None) -> list[Json]:
    """Return the sequencer's environment: where things are, and how to reach storage.

    ``host_env`` is the worker's environment; the variables ``sequencer_host_env`` names are
    copied from it, ``$`` escaped so that kubelet's ``$(VAR)`` expansion leaves them as they are.
    """
    values = {
        "KUEUE_TES_TASK_DIR": TASK_DIR,
        "TMPDIR": SEQUENCER_TMP,
        "KUEUE_TES_CONTROL_DIR": CONTROL,
        "KUEUE_TES_WORK_DIR": WORK,
        "KUEUE_TES_FILE_ROOTS": ",".join(settings.file_roots),
        "KUEUE_TES_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "KUEUE_TES_S3_REGION": settings.s3_region or "",
        "KUEUE_TES_S3_PATH_STYLE": str(settings.s3_path_style).lower(),
        "KUEUE_TES_HTTP_PUT": str(settings.http_put).lower(),
        "KUEUE_TES_TRANSFER_RETRIES": str(settings.transfer_retries),
        "KUEUE_TES_TRANSFER_PARALLELISM": str(settings.transfer_parallelism),
        "KUEUE_TES_TRANSFER_BACKOFF_SECONDS": str(settings.transfer_backoff_seconds),
        "KUEUE_TES_TRANSFER_TIMEOUT_SECONDS": str(settings.transfer_timeout_seconds),
        "KUEUE_TES_S3_MULTIPART_THRESHOLD_BYTES": str(settings.s3_multipart_threshold_bytes),
    }
    env = [{"name": k, "value": v} for k, v in values.items() if v]
    for name in settings.sequencer_host_env:
        if host_env is not None and name in host_env and name not in values:
            env.append({"name": name, "value": host_env[name].replace("$", "$$")})
    return env


def _file_root_volumes(settings: Settings) -> list[Json]:
    # Shared file systems reach the sequencer only, at the same path as on the node.
    return [
        {"name": f"root-{i}", "hostPath": {"path": root, "type": "Directory"}}
        for i, root in enumerate(settings.file_roots)
    ]


def _sequencer(settings: Settings, host_env: Mapping[str, str] | None) -> Json:
    container: Json = {
        "name": "sequencer",
        "image": settings.image,
        "restartPolicy": "Always",
        "command": [settings.pod_python, "-m", "worker.sequencer"],
        "env": sequencer_env(settings, host_env),
        "resources": _ours(settings),
        "securityContext": UNPRIVILEGED,
        "volumeMounts": [
            _control_mount(),
            {"name": "work", "mountPath": WORK},
            {"name": "task", "mountPath": TASK_DIR, "readOnly": True},
            # The root file system is read-only; libraries may still want a temp directory
            # (TMPDIR points here: a mount over /tmp would hide what the local runtime keeps).
            {"name": "sequencer-tmp", "mountPath": SEQUENCER_TMP},
            *(
                {"name": v["name"], "mountPath": v["hostPath"]["path"]}
                for v in _file_root_volumes(settings)
            ),
        ],
        "startupProbe": {
            "exec": {"command": ["test", "-e", STAGED]},
            "periodSeconds": 1,
            "failureThreshold": max(1, settings.stage_in_timeout_seconds),
        },
    }
    if settings.storage_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.storage_secret}}]
    return container


def labels(task_id: str) -> dict[str, str]:
    """Return the labels of every object of a task."""
    return {MANAGED_BY: "kueue-tes", TASK_ID: task_id}


def placement(task: Json, settings: Settings) -> Placement:
    """Return what the task asks of Kueue under the operator's policy (app.policy)."""
    return policy.placement(task.get("resources"), settings)


def kueue_labels(task: Json, settings: Settings) -> dict[str, str]:
    """Return the Kueue labels a task's Job carries: queue, priority class, max run time."""
    return _kueue_labels(placement(task, settings))


def _kueue_labels(place: Placement) -> dict[str, str]:
    out = {QUEUE_NAME: place.queue}
    if place.priority_class:
        out[PRIORITY_CLASS] = place.priority_class
    if place.max_run_seconds:
        out[MAX_EXEC_TIME] = str(place.max_run_seconds)
    return out


def _scheduling(place: Placement) -> Json:
    """Return the pod's nodeSelector and node affinity; Kueue's flavor assignment honours both."""
    out: Json = {}
    if place.node_selector:
        out["nodeSelector"] = dict(sorted(place.node_selector.items()))
    if place.zones:
        term = {"key": policy.ZONE_LABEL, "operator": "In", "values": list(place.zones)}
        out["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [term]}]
                }
            }
        }
    return out


def build_plan(task: Json) -> Json:
    """Return plan.json: what the sequencer needs beyond the task itself."""
    return {
        "task_id": task["id"],
        "mounts": [{"path": m.path, "kind": m.kind} for m in plan_mounts(task)],
        "executors": len(task["executors"]),
    }


def build_configmap(task: Json, settings: Settings) -> Json:
    """Return the ConfigMap carrying the task and its plan to the sequencer."""
    shown = {key: value for key, value in task.items() if key != "logs"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": job_name(task["id"]),
            "namespace": settings.namespace,
            "labels": labels(task["id"]),
        },
        "data": {
            "task.json": json.dumps(shown, sort_keys=True),
            "plan.json": json.dumps(build_plan(task), sort_keys=True),
        },
    }


def build_job(task: Json, settings: Settings, host_env: Mapping[str, str] | None = None) -> Json:
    """Return the suspended Job that runs the whole task in one pod.

    ``host_env``: the worker's environment, for the ``sequencer_host_env`` setting.
    """
    task_id = task["id"]
    mounts = plan_mounts(task)
    place = placement(task, settings)
    resources = task.get("resources") or {}
    work: Json = {"name": "work", "emptyDir": {}}
    if resources.get("disk_gb"):
        work["emptyDir"]["sizeLimit"] = _mebibytes(resources["disk_gb"])
    pod_spec: Json = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "serviceAccountName": settings.task_service_account,
        "initContainers": [
            {
                "name": "setup",
                "image": settings.image,
                "command": [settings.pod_python, "-m", "worker.sequencer.setup", CONTROL],
                "resources": _ours(settings),
                "securityContext": UNPRIVILEGED,
                "volumeMounts": [_control_mount()],
            },
            _sequencer(settings, host_env),
            *(_executor(i, ex, task, mounts, place) for i, ex in enumerate(task["executors"])),
        ],
        "containers": [
            {
                "name": "finish",
                "image": settings.image,
                "command": [BUSYBOX, "sh", "-c", FINISH_SCRIPT],
                "resources": _ours(settings),
                "securityContext": UNPRIVILEGED,
                "volumeMounts": [_control_mount()],
            }
        ],
        "volumes": [
            {"name": "control", "emptyDir": {}},
            work,
            {"name": "task", "configMap": {"name": job_name(task_id)}},
            {"name": "sequencer-tmp", "emptyDir": {}},
            *_file_root_volumes(settings),
        ],
        **_scheduling(place),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(task_id),
            "namespace": settings.namespace,
            "labels": {**labels(task_id), **_kueue_labels(place)},
        },
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            # status is explicit: Kubernetes defaults it, but 1.29's schema still requires it.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    }
                ]
            },
            "template": {"metadata": {"labels": labels(task_id)}, "spec": pod_spec},
        },
    }


def own(configmap: Json, job: Json) -> Json:
    """Return the ConfigMap owned by the created Job (deleted with it)."""
    meta = dict(configmap["metadata"])
    meta["ownerReferences"] = [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": job["metadata"]["name"],
            "uid": job["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    return {**configmap, "metadata": meta}
