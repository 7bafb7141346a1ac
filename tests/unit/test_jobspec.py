"""jobspec: task → ConfigMap and suspended Job, checked against golden files and by rule."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from worker import jobspec
from worker.cluster.local.admission import pod_requests
from worker.jobspec import Mount

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(data_dir=Path("/nonexistent"), mongo_uri=None, redis_url=None)
#: An operator policy with GPUs of two kinds, a run-time cap and preemptible capacity.
POLICY = SETTINGS.model_copy(
    update={
        "gpu_resources": ["nvidia=nvidia.com/gpu", "amd=amd.com/gpu"],
        "max_run_seconds": 86_400,
        "preemptible_priority_class": "spot",
        "preemptible_node_selector": ["cloud.google.com/gke-spot=true", "pool=spot"],
    }
)

TASKS: dict[str, dict[str, Any]] = {
    "minimal": {
        "id": "01jb0000000000000000000001",
        "state": "QUEUED",
        "executors": [{"image": "alpine", "command": ["echo", "hello"]}],
    },
    "pipeline": {
        "id": "01jb0000000000000000000002",
        "state": "QUEUED",
        "name": "align",
        "inputs": [
            {"path": "/data/reads.fq", "url": "s3://bucket/reads.fq", "type": "FILE"},
            {"path": "/ref", "url": "s3://bucket/ref/", "type": "DIRECTORY"},
            {"path": "/opt/tool/config.yaml", "content": "a: 1", "type": "FILE"},
        ],
        "outputs": [
            {"path": "/data/out/*.bam", "path_prefix": "/data/out", "url": "s3://b/o/"},
            {"path": "/results/summary.txt", "url": "s3://b/summary.txt", "type": "FILE"},
        ],
        "resources": {
            "cpu_cores": 4,
            "ram_gb": 7.5,
            "disk_gb": 20,
            "backend_parameters": {
                "queue": "team-a",
                "priority_class": "high",
                "max_run_seconds": "3600",
            },
        },
        "executors": [
            {
                "image": "bwa",
                "command": ["bwa", "mem", "/ref/g.fa", "/data/reads.fq"],
                "stdout": "/data/out/a.sam",
                "workdir": "/data",
                "env": {"B": "2", "A": "1"},
            },
            {
                "image": "samtools",
                "command": ["sh", "-c", "samtools sort > x"],
                "stdin": "/data/out/a.sam",
                "stderr": "/logs/sort.err",
                "ignore_error": True,
            },
        ],
        "volumes": ["/scratch"],
        "tags": {"project": "p"},
    },
    "kueue": {
        "id": "01jb0000000000000000000003",
        "state": "QUEUED",
        "resources": {
            "cpu_cores": 8,
            "ram_gb": 64,
            "preemptible": True,
            "zones": ["us-east1-b", "us-east1-c"],
            "backend_parameters": {"gpus": "2", "gpu_type": "amd", "max_run_seconds": "7200"},
        },
        "executors": [
            {"image": "rocm/pytorch", "command": ["python", "train.py"]},
            {"image": "alpine", "command": ["true"]},
        ],
    },
}
GOLDEN_SETTINGS = {"kueue": POLICY}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_golden(name: str) -> None:
    """The manifests of representative tasks match their golden files exactly."""
    task = TASKS[name]
    settings = GOLDEN_SETTINGS.get(name, SETTINGS)
    rendered = yaml.safe_dump_all(
        [jobspec.build_configmap(task, settings), jobspec.build_job(task, settings)],
        sort_keys=True,
    )
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert rendered == path.read_text(), "regenerate with UPDATE_GOLDEN=1 and review the diff"


def test_pod_layout() -> None:
    """setup, the sequencer sidecar, one init container per executor, then finish."""
    job = jobspec.build_job(TASKS["pipeline"], SETTINGS)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    names = [c["name"] for c in pod["initContainers"]]
    assert names == ["setup", "sequencer", "executor-0", "executor-1"]
    assert [c["name"] for c in pod["containers"]] == ["finish"]
    sequencer = pod["initContainers"][1]
    assert sequencer["restartPolicy"] == "Always"
    assert sequencer["startupProbe"]["exec"]["command"] == ["test", "-e", "/tes/staged"]
    assert spec["suspend"] is True and spec["backoffLimit"] == 0
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert labels["kueue.x-k8s.io/priority-class"] == "high"
    assert labels["kueue.x-k8s.io/max-exec-time-seconds"] == "3600"
    assert labels["kueue-tes/task-id"] == TASKS["pipeline"]["id"]
    minimal = jobspec.build_job(TASKS["minimal"], SETTINGS)
    assert minimal["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == SETTINGS.default_queue


def test_executor_containers() -> None:
    """Executors run the runner with their argv exactly, their workdir, env and resources."""
    pod = jobspec.build_job(TASKS["pipeline"], SETTINGS)["spec"]["template"]["spec"]
    first, second = pod["initContainers"][2:]
    assert first["image"] == "bwa"
    assert first["command"] == [
        "/tes/bin/busybox", "sh", "/tes/bin/runner.sh", "/tes", "0",
        "", "/data/out/a.sam", "", "0", "--", "bwa", "mem", "/ref/g.fa", "/data/reads.fq",
    ]  # fmt: skip
    assert second["command"][4:10] == ["1", "/data/out/a.sam", "", "/logs/sort.err", "1", "--"]
    assert first["workingDir"] == "/data" and "workingDir" not in second
    assert first["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert first["resources"] == {
        "requests": {"cpu": "4", "memory": "7680Mi", "ephemeral-storage": "20480Mi"},
        "limits": {"memory": "7680Mi"},
    }
    assert "args" not in first  # the image's entrypoint is never used: command is set


def test_mount_planning() -> None:
    """Files mount as files, output parents and volumes as dirs, nested paths collapse."""
    mounts = jobspec.plan_mounts(TASKS["pipeline"])
    assert mounts == [
        Mount("/data/out", "dir"),  # the glob's directory, also holds stdout a.sam and stdin
        Mount("/data/reads.fq", "file"),  # a file: /data's other image content stays visible
        Mount("/logs", "dir"),
        Mount("/opt/tool/config.yaml", "file"),
        Mount("/ref", "dir"),
        Mount("/results", "dir"),
        Mount("/scratch", "dir"),
    ]
    assert Mount("/opt/tool/config.yaml", "file").sub_path == "fs/opt/tool/config.yaml"
    assert jobspec.plan_mounts(TASKS["minimal"]) == []


def test_nested_paths_collapse() -> None:
    """A file or directory under a mounted directory needs no mount of its own."""
    task = dict(
        TASKS["minimal"],
        volumes=["/data"],
        inputs=[
            {"path": "/data/in/x.txt", "content": "x"},
            {"path": "/data/ref", "url": "u", "type": "DIRECTORY"},
        ],
        outputs=[{"path": "/data/out/y.txt", "url": "u"}],
    )
    assert jobspec.plan_mounts(task) == [Mount("/data", "dir")]


def test_mount_at_root_is_refused() -> None:
    """A directory mount at / would hide the image."""
    task = dict(TASKS["minimal"], volumes=["/"])
    with pytest.raises(ValueError, match="/"):
        jobspec.plan_mounts(task)


def test_configmap_carries_task_and_plan() -> None:
    """The ConfigMap holds task.json (no logs) and plan.json; own() links it to the Job."""
    task = dict(TASKS["pipeline"], logs=[{"logs": [], "outputs": []}])
    cm = jobspec.build_configmap(task, SETTINGS)
    assert "logs" not in json.loads(cm["data"]["task.json"])
    plan = json.loads(cm["data"]["plan.json"])
    assert plan["executors"] == 2 and {"path": "/data/out", "kind": "dir"} in plan["mounts"]
    job = dict(jobspec.build_job(task, SETTINGS))
    job["metadata"] = dict(job["metadata"], uid="1234")
    owned = jobspec.own(cm, job)
    assert owned["metadata"]["ownerReferences"][0]["uid"] == "1234"
    assert "ownerReferences" not in cm["metadata"]


def _with(base: str, **resources: Any) -> dict[str, Any]:
    return dict(TASKS[base], resources=resources)


def _pod(task: dict[str, Any], settings: Settings = POLICY) -> dict[str, Any]:
    spec: dict[str, Any] = jobspec.build_job(task, settings)["spec"]["template"]["spec"]
    return spec


def test_gpus_on_every_executor_counted_once() -> None:
    """Each executor holds the task's GPUs (limits = requests); the pod counts them once."""
    pod = _pod(TASKS["kueue"])
    executors = pod["initContainers"][2:]
    for container in executors:
        assert container["resources"]["limits"]["amd.com/gpu"] == "2"
        assert container["resources"]["requests"]["amd.com/gpu"] == "2"
    ours = [*pod["initContainers"][:2], *pod["containers"]]
    assert all("amd.com/gpu" not in str(c["resources"]) for c in ours)
    assert pod_requests(pod)["amd.com/gpu"] == 2
    assert pod_requests(pod)["cpu"] == 8100  # the task's 8 cores + the sequencer's 100m


def test_gpu_kind_defaults_to_the_first_offered() -> None:
    """Without gpu_type the default kind applies; gpus 0 asks for nothing."""
    pod = _pod(_with("minimal", backend_parameters={"gpus": "1"}))
    assert pod["initContainers"][2]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    chosen = POLICY.model_copy(update={"default_gpu_type": "amd"})
    pod = _pod(_with("minimal", backend_parameters={"gpus": "1"}), chosen)
    assert pod["initContainers"][2]["resources"]["limits"] == {"amd.com/gpu": "1"}
    pod = _pod(_with("minimal", backend_parameters={"gpus": "0", "gpu_type": "amd"}))
    assert "limits" not in pod["initContainers"][2]["resources"]


def test_gpu_kind_no_longer_offered_is_a_value_error() -> None:
    """A stored task whose GPU kind the operator has since removed cannot become a pod."""
    task = _with("minimal", backend_parameters={"gpus": "1", "gpu_type": "tpu"})
    with pytest.raises(ValueError, match="tpu"):
        jobspec.build_job(task, POLICY)


def test_priority_class_and_max_run_labels() -> None:
    """priority_class and max_run_seconds become Kueue's labels; the cap fills and bounds."""
    labels = jobspec.build_job(TASKS["kueue"], POLICY)["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/max-exec-time-seconds"] == "7200"
    assert labels["kueue.x-k8s.io/priority-class"] == "spot"  # preemptible, none named
    none_asked = jobspec.kueue_labels(TASKS["minimal"], POLICY)
    assert none_asked["kueue.x-k8s.io/max-exec-time-seconds"] == "86400"
    over = _with("minimal", backend_parameters={"max_run_seconds": "999999"})
    assert jobspec.kueue_labels(over, POLICY)["kueue.x-k8s.io/max-exec-time-seconds"] == "86400"
    assert "kueue.x-k8s.io/max-exec-time-seconds" not in jobspec.kueue_labels(
        TASKS["minimal"], SETTINGS
    )


def test_preemptible_priority_class_and_node_selector() -> None:
    """preemptible: the configured class unless the task names one, and the node selector."""
    named = _with("minimal", preemptible=True, backend_parameters={"priority_class": "high"})
    job = jobspec.build_job(named, POLICY)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-spot": "true", "pool": "spot"}
    plain = _pod(_with("minimal", preemptible=False))
    assert "nodeSelector" not in plain
    unconfigured = jobspec.build_job(_with("minimal", preemptible=True), SETTINGS)
    assert "kueue.x-k8s.io/priority-class" not in unconfigured["metadata"]["labels"]
    assert "nodeSelector" not in unconfigured["spec"]["template"]["spec"]


def test_zones_become_required_node_affinity() -> None:
    """zones → nodeAffinity on topology.kubernetes.io/zone; invalid and repeated ones dropped."""
    pod = _pod(_with("minimal", zones=["eu-1a", "not a zone", "eu-1b", "eu-1a"]))
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {
                        "key": "topology.kubernetes.io/zone",
                        "operator": "In",
                        "values": ["eu-1a", "eu-1b"],
                    }
                ]
            }
        ]
    }
    assert "affinity" not in _pod(_with("minimal", zones=[]))
    assert "affinity" not in _pod(TASKS["minimal"])
