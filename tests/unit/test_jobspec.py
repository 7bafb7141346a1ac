"""jobspec: task → ConfigMap and suspended Job, checked against golden files and by rule."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from worker import jobspec
from worker.cluster.local import quantity
from worker.cluster.local.admission import pod_requests
from worker.mounts import Mount

GOLDEN = Path(__file__).parent / "golden"
Json = dict[str, Any]
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
TASKS["pipeline-init"] = TASKS["pipeline"]
INIT = SETTINGS.model_copy(update={"pod_layout": "init"})
GOLDEN_SETTINGS = {"kueue": POLICY, "pipeline-init": INIT}


def _executors(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c for c in [*pod["initContainers"], *pod["containers"]] if c["name"].startswith("executor-")
    ]


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
    """ready: setup, the sequencer sidecar (no probe), then executors and finish as main."""
    job = jobspec.build_job(TASKS["pipeline"], SETTINGS)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["setup", "sequencer"]
    names = [c["name"] for c in pod["containers"]]
    assert names == ["executor-0", "executor-1", "finish"]
    sequencer = pod["initContainers"][1]
    assert sequencer["restartPolicy"] == "Always"
    assert "startupProbe" not in sequencer  # nothing waits for a probe period
    setup = pod["initContainers"][0]
    assert setup["command"][3:] == [
        "/tes", "--executors", "2", "--gates",
        "--plan", "/kueue-tes/task/plan.json", "--work", "/kueue-tes/work",
    ]  # fmt: skip
    assert {m["name"] for m in setup["volumeMounts"]} == {"control", "work", "task"}
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


def test_init_layout() -> None:
    """init: executors are init containers after the sequencer, whose probe gates them."""
    pod = jobspec.build_job(TASKS["pipeline"], INIT)["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["initContainers"]]
    assert names == ["setup", "sequencer", "executor-0", "executor-1"]
    assert [c["name"] for c in pod["containers"]] == ["finish"]
    sequencer = pod["initContainers"][1]
    assert sequencer["startupProbe"]["exec"]["command"] == ["test", "-e", "/tes/staged"]
    assert pod["initContainers"][0]["command"][3:] == ["/tes", "--executors", "2"]
    first, second = _executors(pod)
    assert first["resources"] == second["resources"]  # each asks for the whole task
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}


def test_layout_choice() -> None:
    """ready unless several executors use GPUs, or the operator sets init for every task."""
    gpus = {"backend_parameters": {"gpus": "1"}}
    one, two = [{"image": "a", "command": ["x"]}], [{"image": "a", "command": ["x"]}] * 2

    def shape(settings: Settings, executors: list[Json], **resources: Any) -> str:
        task = dict(TASKS["minimal"], executors=executors, resources=resources)
        return jobspec.layout(task, jobspec.placement(task, settings), settings)

    assert shape(POLICY, one) == shape(POLICY, two) == "ready"
    assert shape(POLICY, one, **gpus) == "ready"  # one executor keeps its GPU all along
    assert shape(POLICY, two, **gpus) == "init"  # GPUs pass between init containers only
    assert shape(POLICY, two, backend_parameters={"gpus": "0"}) == "ready"
    policy_init = POLICY.model_copy(update={"pod_layout": "init"})
    assert shape(policy_init, one) == shape(policy_init, two) == "init"
    assert Settings(pod_layout=" INIT ").pod_layout == "init"
    with pytest.raises(ValueError, match="ready or init"):
        Settings(pod_layout="sidecar")


def test_executor_containers() -> None:
    """Executors run the runner with their argv exactly, their workdir, env and resources."""
    pod = jobspec.build_job(TASKS["pipeline"], SETTINGS)["spec"]["template"]["spec"]
    first, second = _executors(pod)
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
    # ready layout: the later executors run while the first idles; each is held to ram_gb
    assert second["resources"] == {
        "requests": {"cpu": "0", "memory": "0"},
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
    executors = _executors(pod)
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
    assert _executors(pod)[0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    chosen = POLICY.model_copy(update={"default_gpu_type": "amd"})
    pod = _pod(_with("minimal", backend_parameters={"gpus": "1"}), chosen)
    assert _executors(pod)[0]["resources"]["limits"] == {"amd.com/gpu": "1"}
    pod = _pod(_with("minimal", backend_parameters={"gpus": "0", "gpu_type": "amd"}))
    assert "limits" not in _executors(pod)[0]["resources"]


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


# -- what Kueue and the scheduler charge for the pod ---------------------------------------------


def k8s_pod_requests(pod: Json) -> dict[str, Decimal]:
    """Kubernetes' PodRequests (k8s.io/component-helpers resource.AggregateContainerRequests).

    Written here from its Go source, apart from the local runtime's own version: the main
    containers' sum plus every restartable init container (sidecar); each init container counts
    with the sidecars started before it; the pod needs the larger of the two, per resource. A
    resource with only a limit requests its limit (the API server's defaulting).
    """

    def requests(container: Json) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {name: quantity.parse(value) for name, value in merged.items()}

    def add(into: dict[str, Decimal], more: dict[str, Decimal]) -> None:
        for name, value in more.items():
            into[name] = into.get(name, Decimal(0)) + value

    def maximum(into: dict[str, Decimal], other: dict[str, Decimal]) -> None:
        for name, value in other.items():
            into[name] = max(into.get(name, Decimal(0)), value)

    reqs: dict[str, Decimal] = {}
    for container in pod.get("containers") or ():
        add(reqs, requests(container))
    sidecars: dict[str, Decimal] = {}
    init: dict[str, Decimal] = {}
    for container in pod.get("initContainers") or ():
        own = requests(container)
        if container.get("restartPolicy") == "Always":
            add(reqs, own)
            add(sidecars, own)
            own = dict(sidecars)
        else:
            add(own, sidecars)
        maximum(init, own)
    maximum(reqs, init)
    return {name: value for name, value in reqs.items() if value}


MI = Decimal(1024**2)


@pytest.mark.parametrize("settings", [SETTINGS, INIT], ids=["ready", "init"])
@pytest.mark.parametrize("name", ["minimal", "pipeline"])
def test_pod_requests_are_the_task_once_plus_the_sidecar(name: str, settings: Settings) -> None:
    """Both layouts: the pod costs the task's request once plus the sequencer's (docs/kueue.md)."""
    pod = jobspec.build_job(TASKS[name], settings)["spec"]["template"]["spec"]
    asked = TASKS[name].get("resources") or {}
    cpu, memory = Decimal(asked.get("cpu_cores") or 1), Decimal(asked.get("ram_gb", 0) * 1024)
    sidecar_cpu, sidecar_memory = Decimal("0.1"), 128 * MI
    expected = {"cpu": cpu + sidecar_cpu, "memory": memory * MI + sidecar_memory}
    if settings.pod_layout == "init":
        # finish runs after the executors, beside the sequencer: two sidecar requests at least
        expected["memory"] = max(expected["memory"], 2 * sidecar_memory)
    if asked.get("disk_gb"):
        expected["ephemeral-storage"] = Decimal(asked["disk_gb"] * 1024) * MI
    assert k8s_pod_requests(pod) == expected
    assert {k: Decimal(v) for k, v in pod_requests(pod).items()} == {
        k: v * 1000 if k == "cpu" else v for k, v in expected.items()
    }  # the local runtime's admission counts the same


def test_pod_requests_count_gpus_once() -> None:
    """GPUs: one executor in the ready layout, several sharing them in the init layout."""
    single = dict(TASKS["kueue"], executors=TASKS["kueue"]["executors"][:1])
    ready = jobspec.build_job(single, POLICY)["spec"]["template"]["spec"]
    assert [c["name"] for c in ready["containers"]] == ["executor-0", "finish"]
    shared = jobspec.build_job(TASKS["kueue"], POLICY)["spec"]["template"]["spec"]
    assert [c["name"] for c in shared["containers"]] == ["finish"]
    for pod in (ready, shared):
        totals = k8s_pod_requests(pod)
        assert totals["amd.com/gpu"] == 2
        assert totals["cpu"] == Decimal("8.1") and totals["memory"] == 64 * 1024 * MI + 128 * MI
