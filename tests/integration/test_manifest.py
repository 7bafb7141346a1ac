"""`kueue-tes manifest`: the objects it prints are valid Kubernetes and ask exactly for the task.

Every printed object passes ``kubernetes-validate --strict`` for the oldest and the newest
Kubernetes version we support (docs/kueue.md), and the pod's effective requests, by Kubernetes'
rule for init containers and native sidecars, are the task's plus the documented overhead.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import cli
from app.settings import Settings
from tests.conftest import ROOT
from worker.cluster.local import quantity
from worker.cluster.local.admission import pod_requests

#: The Kubernetes versions we support at both ends; docs/kueue.md states the same.
OLDEST, NEWEST = "1.29.0", "1.37.0"
MIB = 1024 * 1024

SETTINGS_FILE = """\
# An operator's policy, as a dotenv file.
KUEUE_TES_ALLOWED_QUEUES=team-a,tes
export KUEUE_TES_ALLOWED_PRIORITY_CLASSES=tes-low,tes-normal,tes-high
KUEUE_TES_GPU_RESOURCES="nvidia=nvidia.com/gpu,amd=amd.com/gpu"
KUEUE_TES_MAX_RUN_SECONDS=86400
KUEUE_TES_PREEMPTIBLE_PRIORITY_CLASS=tes-low
KUEUE_TES_PREEMPTIBLE_NODE_SELECTOR=node.kubernetes.io/lifecycle=spot
KUEUE_TES_FILE_ROOTS=/shared
KUEUE_TES_STORAGE_SECRET=tes-storage
KUEUE_TES_SEQUENCER_HOST_ENV=AWS_ACCESS_KEY_ID
"""

EXECUTOR = {"image": "alpine", "command": ["echo", "hello"]}
#: The example tasks we ship are representative tasks too.
EXAMPLES = {
    f"example-{path.stem}": json.loads(path.read_text())
    for path in sorted((ROOT / "manifests" / "examples").glob("*.json"))
}
TASKS: dict[str, dict[str, Any]] = {
    "minimal": {"executors": [EXECUTOR]},
    "pipeline": {
        "name": "align",
        "inputs": [
            {"path": "/data/reads.fq", "url": "s3://bucket/reads.fq"},
            {"path": "/ref", "url": "file:///shared/ref", "type": "DIRECTORY"},
            {"path": "/opt/tool/config.yaml", "content": "a: 1"},
        ],
        "outputs": [
            {"path": "/data/out/*.bam", "path_prefix": "/data/out", "url": "s3://b/o/"},
            {"path": "/results/summary.txt", "url": "s3://b/summary.txt"},
        ],
        "resources": {"cpu_cores": 4, "ram_gb": 7.5, "disk_gb": 20},
        "executors": [
            {
                "image": "bwa",
                "command": ["bwa", "mem", "/ref/g.fa", "/data/reads.fq"],
                "stdout": "/data/out/a.sam",
                "workdir": "/data",
                "env": {"THREADS": "4"},
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
    },
    "kueue": {
        "resources": {
            "cpu_cores": 8,
            "ram_gb": 64,
            "disk_gb": 100,
            "preemptible": True,
            "zones": ["us-east1-b", "us-east1-c"],
            "backend_parameters": {
                "queue": "team-a",
                "gpus": "2",
                "gpu_type": "amd",
                "max_run_seconds": "7200",
            },
            "backend_parameters_strict": True,
        },
        "executors": [EXECUTOR, {"image": "rocm/pytorch", "command": ["python", "train.py"]}],
    },
    "large": {
        "resources": {
            "cpu_cores": 96,
            "ram_gb": 1536,
            "disk_gb": 4000,
            "backend_parameters": {"gpus": "8", "priority_class": "tes-high"},
        },
        "executors": [EXECUTOR],
    },
    **EXAMPLES,
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The printed objects must depend on the settings file alone.
    for name in list(os.environ):
        if name.upper().startswith("KUEUE_TES_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    """The operator's settings file."""
    path = tmp_path / "settings.env"
    path.write_text(SETTINGS_FILE)
    return path


def manifest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, task: dict[str, Any], settings: Path
) -> list[dict[str, Any]]:
    """Run `kueue-tes manifest` on a task and return the objects it printed."""
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    cli.main(["manifest", str(path), "--settings", str(settings)])
    return list(yaml.safe_load_all(capsys.readouterr().out))


def _validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("kubernetes-validate is missing: install the test extra")
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[test]')")
    supported = kubernetes_validate.utils.all_versions()
    missing = [v for v in (OLDEST, NEWEST) if v not in supported]
    if missing:
        message = f"kubernetes-validate {kubernetes_validate.__version__} lacks {missing}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return kubernetes_validate


@pytest.mark.parametrize("name", sorted(TASKS))
def test_printed_objects_are_valid_kubernetes(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, settings_file: Path
) -> None:
    """Every object passes strict schema validation for the oldest and newest version."""
    validator = _validator()
    objects = manifest(capsys, tmp_path, TASKS[name], settings_file)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job"]
    for obj in objects:
        for version in (OLDEST, NEWEST):
            try:
                validator.validate(obj, version, strict=True)
            except validator.ValidationError as exc:
                pytest.fail(f"{name} {obj['kind']} on Kubernetes {version}: {exc.message}")


def _asked(task: dict[str, Any], settings: Settings) -> dict[str, int]:
    """What the task asks for, in Kubernetes units, and the GPUs under their resource name."""
    resources = task.get("resources") or {}
    params = resources.get("backend_parameters") or {}
    asked = {"cpu": 1000 * (resources.get("cpu_cores") or 1)}
    if resources.get("ram_gb"):
        asked["memory"] = math.ceil(resources["ram_gb"] * 1024) * MIB
    if resources.get("disk_gb"):
        asked["ephemeral-storage"] = math.ceil(resources["disk_gb"] * 1024) * MIB
    if params.get("gpus"):
        kinds = dict(item.split("=", 1) for item in settings.gpu_resources)
        asked[kinds[params.get("gpu_type", "nvidia")]] = int(params["gpus"])
    return asked


@pytest.mark.parametrize("name", sorted(TASKS))
def test_pod_requests_are_the_task_plus_the_fixed_overhead(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, settings_file: Path
) -> None:
    """requests = task + sequencer (ready layout: finish asks for nothing) for cpu and memory."""
    settings = Settings(**cli._settings_file(settings_file))
    job = manifest(capsys, tmp_path, TASKS[name], settings_file)[1]
    effective = pod_requests(job["spec"]["template"]["spec"])
    sidecar = {
        "cpu": quantity.milli(settings.sidecar_cpu),
        "memory": quantity.units(settings.sidecar_memory),
    }
    expected = _asked(TASKS[name], settings)
    init = any(c["name"] == "executor-0" for c in job["spec"]["template"]["spec"]["initContainers"])
    for resource, overhead in sidecar.items():
        # setup runs before the sequencer starts, so it never adds to anything; in the init
        # layout, finish runs beside the sequencer after the executors.
        floor = 2 * overhead if init else overhead
        expected[resource] = max(expected.get(resource, 0) + overhead, floor)
    assert effective == expected


def test_kueue_labels_and_scheduling(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, settings_file: Path
) -> None:
    """Queue, priority class, max run time, preemptible selector and zones reach the Job."""
    configmap, job = manifest(capsys, tmp_path, TASKS["kueue"], settings_file)
    placeholder = "tes-" + cli.MANIFEST_ID
    assert configmap["metadata"]["name"] == job["metadata"]["name"] == placeholder
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert labels["kueue.x-k8s.io/priority-class"] == "tes-low"
    assert labels["kueue.x-k8s.io/max-exec-time-seconds"] == "7200"
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node.kubernetes.io/lifecycle": "spot"}
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [
        "us-east1-b",
        "us-east1-c",
    ]
    env = {e["name"]: e.get("value") for e in pod["initContainers"][1]["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == "(from the worker's environment)"


def test_dropped_requests_are_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, settings_file: Path
) -> None:
    """Outside the policy without strict: the object is printed, the note goes to stderr."""
    task = {"executors": [EXECUTOR], "resources": {"backend_parameters": {"queue": "team-z"}}}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    cli.main(["manifest", str(path), "--settings", str(settings_file)])
    out, err = capsys.readouterr()
    job = list(yaml.safe_load_all(out))[1]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "tes"
    assert "'queue' was ignored" in err and "team-z" in err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", "body: not valid JSON"),
        ("[]", "body: must be a JSON object"),
        ('{"executors": []}', "executors:"),
        (
            json.dumps({"executors": [EXECUTOR], "volumes": ["/proc/x"]}),
            "volumes[0]: '/proc/x' is under /proc",
        ),
        (
            json.dumps(
                {
                    "executors": [EXECUTOR],
                    "resources": {
                        "backend_parameters": {"gpus": "9"},
                        "backend_parameters_strict": True,
                    },
                }
            ),
            "resources.backend_parameters.gpus: 9 GPUs is over the limit of 8",
        ),
    ],
)
def test_invalid_tasks_exit_2_with_the_400_message(
    body: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Invalid input prints what CreateTask would answer and exits with status 2."""
    path = tmp_path / "task.json"
    path.write_text(body)
    with pytest.raises(SystemExit) as info:
        cli.main(["manifest", str(path)])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "400 Bad Request" in err and message in err


def test_bad_settings_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An unknown or invalid setting names the line or the variable."""
    task = tmp_path / "task.json"
    task.write_text(json.dumps(TASKS["minimal"]))
    for text, message in (
        ("KUEUE_TES_NO_SUCH=1\n", "settings.env:1"),
        ("KUEUE_TES_MAX_GPUS=many\n", "KUEUE_TES_MAX_GPUS"),
    ):
        (tmp_path / "settings.env").write_text(text)
        with pytest.raises(SystemExit):
            cli.main(["manifest", str(task), "--settings", str(tmp_path / "settings.env")])
        assert message in capsys.readouterr().err


def test_docs_state_the_validated_versions() -> None:
    """docs/kueue.md names the Kubernetes versions this test validates against."""
    text = (ROOT / "docs" / "kueue.md").read_text()
    for version in (OLDEST, NEWEST):
        assert version.rsplit(".", 1)[0] in text
