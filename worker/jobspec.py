"""The task pod as manifests: task → ConfigMap and suspended Job (pure; design section 7).

See docs/task-pod.md for the contract these manifests carry, and its two layouts: ``ready``
(executors are main containers that wait for their turn, so the pod is Ready once it runs) and
``init`` (executors are init containers, one after the other).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from app import policy
from app.policy import Placement
from app.settings import Settings
from worker.cluster.base import MANAGED_BY, QUEUE_NAME, TASK_ID
from worker.mounts import Mount, plan_mounts

CONTROL = "/tes"
WORK = "/kueue-tes/work"
TASK_DIR = "/kueue-tes/task"
SEQUENCER_TMP = "/kueue-tes/tmp"
BUSYBOX = f"{CONTROL}/bin/busybox"
RUNNER = f"{CONTROL}/bin/runner.sh"
STAGED = f"{CONTROL}/staged"
FINISH_WAKE = f"{CONTROL}/finish.wake"
PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
MAX_EXEC_TIME = "kueue.x-k8s.io/max-exec-time-seconds"

#: `finish` waits for the sequencer's verdict and turns it into its exit code. The sequencer
#: wakes it through its FIFO (read-write: the open never blocks); the timeout is a safeguard.
FINISH_SCRIPT = f"""\
if [ -p {FINISH_WAKE} ]; then exec 3<>{FINISH_WAKE}; else exec 3<&-; fi
while [ ! -s {CONTROL}/verdict ]; do read -t 30 -r x <&3 2>/dev/null || {BUSYBOX} sleep 0.05; done
case "$({BUSYBOX} cat {CONTROL}/verdict)" in
  COMPLETE) exit 0 ;;
  EXECUTOR_ERROR) exit 1 ;;
  *) exit 2 ;;
esac
"""

Json = dict[str, Any]
Layout = Literal["ready", "init"]


def job_name(task_id: str) -> str:
    """Return the name of a task's Job and ConfigMap."""
    return f"tes-{task_id}"


def _mebibytes(gigabytes: float) -> str:
    # TES sizes are in GB; we read them as GiB and round up, so a task never gets less.
    return f"{math.ceil(gigabytes * 1024)}Mi"


def layout(task: Json, place: Placement, settings: Settings) -> Layout:
    """Return the pod layout of a task (docs/task-pod.md).

    ``ready`` unless the operator asks for ``init`` everywhere, or the task has several
    executors that use GPUs: a device plugin's GPUs pass from one container to the next only
    between init containers, never between main containers.
    """
    if settings.pod_layout == "init":
        return "init"
    if place.gpus and place.gpu_resource and len(task["executors"]) > 1:
        return "init"
    return "ready"


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


def _rider_resources(first: Json) -> Json:
    # The ready layout: executors after the first run while the first one idles, so they ask
    # for nothing more; the first one's memory limit holds each of them to ram_gb.
    out: Json = {"requests": {"cpu": "0", "memory": "0"}}
    memory = (first.get("limits") or {}).get("memory")
    if memory:
        out["limits"] = {"memory": memory}
    return out


#: Our own containers (setup, sequencer, finish) need no privilege at all.
UNPRIVILEGED: Json = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _ours(settings: Settings, idle: bool = False) -> Json:
    # `finish` of the ready layout waits on a FIFO all along: it asks for nothing.
    cpu, memory = ("0", "0") if idle else (settings.sidecar_cpu, settings.sidecar_memory)
    return {
        "requests": {"cpu": cpu, "memory": memory},
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


def _executor(index: int, executor: Json, mounts: list[Mount], resources: Json) -> Json:
    container: Json = {
        "name": f"executor-{index}",
        "image": executor["image"],
        "command": runner_command(index, executor),
        "resources": resources,
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


def _sequencer(settings: Settings, host_env: Mapping[str, str] | None, shape: Layout) -> Json:
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
    }
    if shape == "init":
        # Init executors start once this probe passes: after stage-in, on the probe's period.
        container["startupProbe"] = {
            "exec": {"command": ["test", "-e", STAGED]},
            "periodSeconds": 1,
            "failureThreshold": max(1, settings.stage_in_timeout_seconds),
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
    shape = layout(task, place, settings)
    resources = task.get("resources") or {}
    work: Json = {"name": "work", "emptyDir": {}}
    if resources.get("disk_gb"):
        work["emptyDir"]["sizeLimit"] = _mebibytes(resources["disk_gb"])
    first = _executor_resources(task, place)
    executors = [
        _executor(i, ex, mounts, first if i == 0 or shape == "init" else _rider_resources(first))
        for i, ex in enumerate(task["executors"])
    ]
    setup = [settings.pod_python, "-m", "worker.sequencer.setup", CONTROL]
    setup += ["--executors", str(len(executors))]
    setup_mounts = [_control_mount()]
    if shape == "ready":
        # Executors' subPaths are bound before stage-in: setup creates them first.
        setup += ["--gates", "--plan", f"{TASK_DIR}/plan.json", "--work", WORK]
        setup_mounts += [
            {"name": "work", "mountPath": WORK},
            {"name": "task", "mountPath": TASK_DIR, "readOnly": True},
        ]
    finish = {
        "name": "finish",
        "image": settings.image,
        "command": [BUSYBOX, "sh", "-c", FINISH_SCRIPT],
        "resources": _ours(settings, idle=shape == "ready"),
        "securityContext": UNPRIVILEGED,
        "volumeMounts": [_control_mount()],
    }
    pod_spec: Json = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "serviceAccountName": settings.task_service_account,
        "initContainers": [
            {
                "name": "setup",
                "image": settings.image,
                "command": setup,
                "resources": _ours(settings),
                "securityContext": UNPRIVILEGED,
                "volumeMounts": setup_mounts,
            },
            _sequencer(settings, host_env, shape),
            *(executors if shape == "init" else []),
        ],
        "containers": [*(executors if shape == "ready" else []), finish],
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
