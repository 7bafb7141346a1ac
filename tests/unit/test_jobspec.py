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
from worker.jobspec import Mount

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(data_dir=Path("/nonexistent"), mongo_uri=None, redis_url=None)

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
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_golden(name: str) -> None:
    """The manifests of representative tasks match their golden files exactly."""
    task = TASKS[name]
    rendered = yaml.safe_dump_all(
        [jobspec.build_configmap(task, SETTINGS), jobspec.build_job(task, SETTINGS)],
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
        "onPodConditions": [{"type": "DisruptionTarget"}],
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
