"""The local runtime: pure pieces (quantities, requests, admission, bwrap argv) and real pods."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from worker.cluster.base import TASK_ID, Observation, PermanentError
from worker.cluster.local import LocalCluster, admission, objects, quantity, sandbox
from worker.cluster.local.sandbox import HostEntry, SandboxError

GiB = 1024**3
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# -- quantities --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        ("1Gi", Decimal(GiB)),
        ("512Mi", Decimal(512 * 1024**2)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("1E", Decimal(10**18)),
        ("100k", Decimal(100_000)),
        ("10u", Decimal("0.00001")),
        (".5", Decimal("0.5")),
        (3, Decimal(3)),
        (0.25, Decimal("0.25")),
    ],
)
def test_quantity_parses_kubernetes_forms(text: str | int | float, value: Decimal) -> None:
    assert quantity.parse(text) == value


@pytest.mark.parametrize("text", ["", "1Gb", "one", "1 Gi", "1.2.3", "Mi", "1e", "--1"])
def test_quantity_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        quantity.parse(text)


def test_quantity_rounds_up_and_prints_like_kubernetes() -> None:
    assert quantity.milli("0.0001") == 1
    assert quantity.milli("1") == 1000
    assert quantity.units("1.5") == 2
    assert quantity.format_cpu(1000) == "1"
    assert quantity.format_cpu(1500) == "1500m"
    assert quantity.format_bytes(512 * 1024**2) == "512Mi"
    assert quantity.format_bytes(GiB) == "1Gi"
    assert quantity.format_bytes(1000) == "1000"


# -- effective pod requests and admission ------------------------------------------------------


def _c(name: str, cpu: str = "0", memory: str = "0", **extra: Any) -> dict[str, Any]:
    return {"name": name, "resources": {"requests": {"cpu": cpu, "memory": memory}}, **extra}


def test_requests_take_the_larger_of_init_peak_and_sidecars_plus_main() -> None:
    spec = {
        "initContainers": [
            _c("setup", "100m", "64Mi"),
            _c("sequencer", "100m", "128Mi", restartPolicy="Always"),
            _c("executor-0", "4", "8Gi"),
            _c("executor-1", "2", "16Gi"),
        ],
        "containers": [_c("finish", "100m", "64Mi")],
    }
    # executor-0 runs beside the sequencer: 4.1 cpu; executor-1 too: 16Gi + 128Mi.
    assert admission.pod_requests(spec) == {"cpu": 4100, "memory": 16 * GiB + 128 * 1024**2}


def test_requests_count_sidecars_and_main_containers_together() -> None:
    spec = {
        "initContainers": [
            _c("a", "1", "1Gi", restartPolicy="Always"),
            _c("b", "500m", "1Gi"),
            _c("c", "1", "1Gi", restartPolicy="Always"),
        ],
        "containers": [_c("m1", "1"), _c("m2", "2")],
    }
    assert admission.pod_requests(spec) == {"cpu": 5000, "memory": 2 * GiB}


def test_limit_alone_counts_as_request_and_extended_resources_are_kept() -> None:
    spec = {"containers": [{"name": "m", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}
    assert admission.pod_requests(spec) == {"nvidia.com/gpu": 1}


def test_strict_fifo_admits_in_order_and_explains_like_kueue() -> None:
    quota = {"cpu": 2000, "memory": 4 * GiB}
    queue = [
        admission.Candidate("w1", {"cpu": 1000, "memory": GiB}),
        admission.Candidate("w2", {"cpu": 2000, "memory": 4 * GiB}),
        admission.Candidate("w3", {"cpu": 100}),
        admission.Candidate("w4", {"cpu": 3000}),
        admission.Candidate("w5", {"nvidia.com/gpu": 1}),
    ]
    decision = admission.schedule(queue, [], quota)
    assert decision.admitted == ["w1"]
    assert decision.pending["w2"] == (
        "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor "
        "local, 1 more needed, insufficient unused quota for memory in flavor local, "
        "1Gi more needed"
    )
    assert "waiting for workload w2" in decision.pending["w3"]  # it fits, but w2 is first
    assert decision.pending["w4"].endswith(
        "insufficient quota for cpu in flavor local, request > maximum capacity (3 > 2)"
    )
    assert decision.pending["w5"].endswith("resource nvidia.com/gpu unavailable in ClusterQueue")


def test_a_request_that_never_fits_does_not_block_the_queue() -> None:
    decision = admission.schedule(
        [admission.Candidate("big", {"cpu": 9000}), admission.Candidate("small", {"cpu": 500})],
        [{"cpu": 500}],
        {"cpu": 1000, "memory": GiB},
    )
    assert decision.admitted == ["small"]


# -- the bwrap command line ---------------------------------------------------------------------


class FakeHost:
    """A host tree: directories map names to subtrees, symlinks are strings, files are None."""

    def __init__(self, tree: dict[str, Any]) -> None:
        self.tree = tree

    def _node(self, path: str) -> Any:
        node: Any = self.tree
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, dict) or part not in node:
                raise KeyError(path)
            node = node[part]
        return node

    def entry(self, path: str) -> HostEntry | None:
        try:
            node = self._node(path)
        except KeyError:
            return None
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if isinstance(node, str):
            return HostEntry(name, "symlink", node)
        return HostEntry(name, "dir" if isinstance(node, dict) else "file")

    def listdir(self, path: str) -> list[HostEntry]:
        node = self._node(path)
        out = [self.entry(f"{path.rstrip('/')}/{name}") for name in sorted(node)]
        return [e for e in out if e is not None]


HOST = FakeHost(
    {
        "bin": "usr/bin",
        "etc": {"passwd": None},
        "mnt": {"nfs": {}, "other": {}},
        "proc": {},
        "tmp": {"junk": None},
        "usr": {"bin": {"sh": None}, "lib": {}, "local": {"bin": {}, "share": {}}},
        "data-link": "/mnt/nfs",
        "version": None,
    }
)


def _pairs(argv: list[str], flag: str, arity: int = 2) -> list[tuple[str, ...]]:
    return [tuple(argv[i + 1 : i + 1 + arity]) for i, a in enumerate(argv) if a == flag]


def test_bwrap_argv_rebuilds_the_host_root_read_only() -> None:
    container: dict[str, Any] = {"name": "c", "command": ["sh", "-c", "$(GREETING) $$(x)"]}
    container["env"] = [{"name": "WHO", "value": "you"}, {"name": "GREETING", "value": "hi $(WHO)"}]
    argv = sandbox.bwrap_argv(container, {}, fields={}, termination_log="/h/term", host=HOST)
    assert argv[:3] == ["bwrap", "--tmpfs", "/"]
    assert ("usr/bin", "/bin") in _pairs(argv, "--symlink")
    binds = _pairs(argv, "--ro-bind")
    assert {("/etc", "/etc"), ("/mnt", "/mnt"), ("/usr", "/usr"), ("/version", "/version")} <= set(
        binds
    )
    assert not any(src in {"/proc", "/tmp", "/dev"} for src, _ in binds)
    assert ("/h/term", "/dev/termination-log") in _pairs(argv, "--bind")
    assert argv[argv.index("--remount-ro") + 1] == "/"
    assert {"--unshare-pid", "--unshare-ipc", "--die-with-parent", "--clearenv"} <= set(argv)
    assert "--unshare-net" not in argv  # tasks reach loopback servers
    env = {key: value for key, value in _pairs(argv, "--setenv")}
    assert env == {"WHO": "you", "GREETING": "hi you", "PATH": sandbox.DEFAULT_PATH}
    assert argv[argv.index("--") + 1 :] == ["sh", "-c", "hi you $(x)"]


def test_bwrap_argv_keeps_host_paths_that_a_fresh_tmp_would_hide() -> None:
    """``keep`` paths (our virtualenv under /tmp, say) are bound read-only after /tmp."""
    container: dict[str, Any] = {"name": "c", "command": ["true"]}
    argv = sandbox.bwrap_argv(
        container, {}, fields={}, termination_log=None, host=HOST, keep=("/tmp/ci/venv",)
    )
    assert ("/tmp/ci/venv", "/tmp/ci/venv") in _pairs(argv, "--ro-bind")
    tmpfs_tmp = max(i for i, arg in enumerate(argv) if arg == "/tmp" and argv[i - 1] == "--tmpfs")
    assert argv.index("/tmp/ci/venv") > tmpfs_tmp


def test_bwrap_argv_makes_mount_points_inside_host_directories() -> None:
    container = {
        "name": "c",
        "command": ["true"],
        "workingDir": "/srv/work",
        "volumeMounts": [
            {"name": "w", "mountPath": "/mnt/data", "subPath": "fs/mnt/data"},
            {"name": "w", "mountPath": "/usr/local/kt", "subPath": "fs/usr/local/kt"},
            {"name": "w", "mountPath": "/data-link/in.txt", "subPath": "fs/in.txt"},
            {"name": "w", "mountPath": "/new", "readOnly": True},
        ],
    }
    argv = sandbox.bwrap_argv(
        container, {"w": "/vol/w"}, fields={}, termination_log=None, host=HOST
    )
    tmpfs = [path for (path,) in _pairs(argv, "--tmpfs", 1)]
    assert {"/", "/mnt", "/mnt/nfs", "/usr", "/usr/local"} <= set(tmpfs)
    binds = set(_pairs(argv, "--ro-bind"))
    # Neighbours of every replaced directory are still there, read-only.
    assert {("/mnt/other", "/mnt/other"), ("/usr/bin", "/usr/bin")} <= binds
    assert {("/usr/local/bin", "/usr/local/bin"), ("/usr/local/share", "/usr/local/share")} <= binds
    assert ("/mnt", "/mnt") not in binds
    assert set(_pairs(argv, "--bind")) == {
        ("/vol/w/fs/mnt/data", "/mnt/data"),
        ("/vol/w/fs/usr/local/kt", "/usr/local/kt"),
        ("/vol/w/fs/in.txt", "/mnt/nfs/in.txt"),  # through the host's symlink, as in an image
        ("/vol/w", "/new"),
    }
    assert ("/srv/work",) in _pairs(argv, "--dir", 1)  # a missing workingDir is created
    remounted = [path for (path,) in _pairs(argv, "--remount-ro", 1)]
    assert remounted[-1] == "/" and "/new" in remounted and "/usr/local" in remounted
    assert "/mnt/data" not in remounted
    assert argv[argv.index("--chdir") + 1] == "/srv/work"


def test_bwrap_argv_refuses_what_kubelet_refuses() -> None:
    def argv(**container: Any) -> list[str]:
        return sandbox.bwrap_argv(
            {"name": "c", **container}, {"w": "/v"}, fields={}, termination_log=None, host=HOST
        )

    with pytest.raises(SandboxError, match="no command"):
        argv()
    with pytest.raises(SandboxError, match="valueFrom"):
        argv(command=["x"], env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s"}}}])
    with pytest.raises(SandboxError, match="subPath"):
        argv(command=["x"], volumeMounts=[{"name": "w", "mountPath": "/a", "subPath": "../x"}])
    with pytest.raises(SandboxError, match="no pod volume"):
        argv(command=["x"], volumeMounts=[{"name": "nope", "mountPath": "/a"}])
    fields = {"metadata.name": "pod-1"}
    env = sandbox.container_env(
        {"env": [{"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        fields,
    )
    assert env["P"] == "pod-1"


def test_kubelet_expansion_rules() -> None:
    env = {"A": "x"}
    assert sandbox.expand("$(A)/$(B)/$$(A)/$$/$x/$(", env) == "x/$(B)/$(A)/$/$x/$("


# -- real pods ------------------------------------------------------------------------------------


@pytest.fixture
def bwrap() -> str:
    """Return bubblewrap's path, or skip (fail on CI) where it is missing."""
    path = shutil.which("bwrap")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("bwrap is not installed (apt-get install bubblewrap)")
        pytest.skip("bwrap is not installed (apt-get install bubblewrap)")
    return path


@pytest.fixture
def make_cluster(tmp_path: Path, bwrap: str) -> Iterator[Callable[..., LocalCluster]]:
    """Build LocalClusters under tmp_path and close them after the test."""
    made: list[LocalCluster] = []

    def make(cpu: float = 4, memory: int = 8 * GiB) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"rt{len(made)}", cpu, memory, bwrap=bwrap)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


class Recorder:
    """Collects a cluster's observations and waits for one that matches."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.seen: list[Observation] = []

    def until(self, match: Callable[[Observation], bool], timeout: float = 20) -> Observation:
        found = next((o for o in self.seen if match(o)), None)
        deadline = time.monotonic() + timeout
        while found is None and time.monotonic() < deadline:
            for observation in self.cluster.watch(min(0.5, deadline - time.monotonic())):
                self.seen.append(observation)
                if match(observation):
                    found = observation
                    break
        assert found is not None, "no matching observation"
        return found

    def index(self, match: Callable[[Observation], bool]) -> int:
        return next(i for i, o in enumerate(self.seen) if match(o))


def _condition(obs: Observation, kind: str) -> bool:
    found = objects.condition(obs.obj, kind)
    return found is not None and found["status"] == "True"


def job_done(task: str) -> Callable[[Observation], bool]:
    return lambda o: (
        o.task_id == task
        and o.kind == "Job"
        and (_condition(o, "Complete") or _condition(o, "Failed"))
    )


def admitted(task: str) -> Callable[[Observation], bool]:
    return lambda o: o.task_id == task and o.kind == "Workload" and _condition(o, "Admitted")


def make_job(
    task: str,
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    cpu: str = "100m",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a (ConfigMap, Job) pair shaped like the task pod's."""
    name = f"tes-{task}"
    labels = {TASK_ID: task, "app.kubernetes.io/managed-by": "kueue-tes"}
    for container in containers:
        container.setdefault("image", "busybox")
        container.setdefault("resources", {"requests": {"cpu": cpu, "memory": "64Mi"}})
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {**labels, "kueue.x-k8s.io/queue-name": "tes"}},
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 2,
                    "volumes": volumes or [{"name": "control", "emptyDir": {}}],
                    "initContainers": init or [],
                    "containers": containers,
                },
            },
        },
    }
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"task.json": f'{{"id": "{task}"}}'},
    }
    return configmap, job


def sh(
    name: str, script: str, mounts: list[tuple[str, str]] | None = None, **extra: Any
) -> dict[str, Any]:
    """Return a container running ``script`` with busybox sh."""
    volume_mounts = [{"name": vol, "mountPath": path} for vol, path in mounts or []]
    return {
        "name": name,
        "command": ["/bin/busybox", "sh", "-c", script],
        "volumeMounts": volume_mounts or [{"name": "control", "mountPath": "/tes"}],
        **extra,
    }


def _statuses(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = pod["status"]
    return {s["name"]: s for s in [*status["initContainerStatuses"], *status["containerStatuses"]]}


def _pod(cluster: LocalCluster, task: str) -> dict[str, Any]:
    pods = [o.obj for o in cluster.snapshot() if o.task_id == task and o.kind == "Pod"]
    assert len(pods) == 1 and pods[0] is not None
    return pods[0]


def test_init_sidecar_and_main_run_in_kubelets_order(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    rec = Recorder(cluster)
    sidecar = sh(
        "sequencer",
        "trap 'echo stopping; exit 0' TERM; cat /etc/task/task.json > /tes/task-copy; "
        "sleep 0.3; touch /tes/staged; sleep 300 & wait",
        [("control", "/tes"), ("task", "/etc/task")],
        restartPolicy="Always",
        startupProbe={"exec": {"command": ["test", "-e", "/tes/staged"]}, "periodSeconds": 1},
    )
    init = [
        sh(
            "setup",
            "echo out; echo err >&2; echo from-setup > /tes/setup; echo ok > /dev/termination-log",
        ),
        sidecar,
        sh("executor-0", "test -e /tes/staged || exit 9; echo staged-before-me > /tes/exec0"),
    ]
    main = sh(
        "finish",
        "cat /tes/setup /tes/exec0 /tes/task-copy; printf 'done' > /tes/msg; exit 0",
        terminationMessagePath="/tes/msg",
    )
    volumes = [
        {"name": "control", "emptyDir": {}},
        {"name": "task", "configMap": {"name": "tes-t1"}},
    ]
    cluster.submit("t1", *make_job("t1", [main], init, volumes))
    done = rec.until(job_done("t1"))
    assert _condition(done, "Complete")
    assert done.obj is not None
    job_status = done.obj["status"]
    assert job_status["succeeded"] == 1 and job_status["active"] == 0
    assert RFC3339.match(job_status["startTime"]) and RFC3339.match(job_status["completionTime"])
    assert done.obj["spec"]["suspend"] is False

    pod = _pod(cluster, "t1")
    assert pod["metadata"]["annotations"][objects.RUNTIME_NOTE_KEY] == objects.RUNTIME_NOTE
    assert pod["metadata"]["name"].startswith("tes-t1-") and len(pod["metadata"]["name"]) == 12
    assert pod["metadata"]["labels"][TASK_ID] == "t1"
    assert pod["status"]["phase"] == "Succeeded"
    statuses = _statuses(pod)
    setup = statuses["setup"]["state"]["terminated"]
    assert (setup["exitCode"], setup["reason"], setup["message"]) == (0, "Completed", "ok\n")
    assert RFC3339.match(setup["startedAt"]) and RFC3339.match(setup["finishedAt"])
    assert statuses["executor-0"]["state"]["terminated"]["exitCode"] == 0
    side = statuses["sequencer"]
    assert side["state"]["terminated"]["exitCode"] == 0 and side["restartCount"] == 0
    assert statuses["finish"]["state"]["terminated"]["message"] == "done"
    assert all(s["ready"] is False for n, s in statuses.items() if n in {"sequencer", "finish"})

    assert cluster.read_log("t1", "setup") == "out\nerr\n"
    assert cluster.read_log("t1", "finish") == 'from-setup\nstaged-before-me\n{"id": "t1"}'
    assert cluster.read_log("t1", "sequencer") == "stopping\n"
    assert cluster.read_log("t1", "finish", limit_bytes=9) == '{"id": "t1"}'[-9:]
    assert cluster.read_log("t1", "nope") == "" and cluster.read_log("zz", "setup") == ""

    workload = next(o.obj for o in cluster.snapshot() if o.kind == "Workload")
    assert workload is not None and workload["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert workload["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == done.obj["metadata"]["uid"]
    admitted_condition = objects.condition(workload, "Admitted")
    assert admitted_condition is not None and objects.RUNTIME_NOTE in admitted_condition["message"]
    assert _condition(Observation("t1", "Workload", "w", workload), "Finished")
    # Pod phases went Pending (init) -> Running (main) -> Succeeded.
    phases = [o.obj["status"]["phase"] for o in rec.seen if o.kind == "Pod" and o.obj]
    assert phases[0] == "Pending" and "Running" in phases and phases[-1] == "Succeeded"


def test_a_failing_init_container_fails_the_pod_and_nothing_later_runs(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    rec = Recorder(cluster)
    init = [
        sh("bad", "echo broken > /dev/termination-log; exit 3"),
        sh("later", "touch /tes/later-ran"),
    ]
    cluster.submit("t2", *make_job("t2", [sh("finish", "touch /tes/finish-ran")], init))
    done = rec.until(job_done("t2"))
    assert _condition(done, "Failed") and done.obj is not None
    failed = objects.condition(done.obj, "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded"
    assert done.obj["status"]["failed"] == 1
    pod = _pod(cluster, "t2")
    assert pod["status"]["phase"] == "Failed"
    statuses = _statuses(pod)
    bad = statuses["bad"]["state"]["terminated"]
    assert (bad["exitCode"], bad["reason"], bad["message"]) == (3, "Error", "broken\n")
    assert statuses["later"]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert statuses["finish"]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert not list(tmp_path.glob("rt0/*/volumes/control/*-ran"))


def test_start_errors_and_probe_failures_fail_the_pod(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    rec = Recorder(cluster)
    missing = {"name": "finish", "command": ["no-such-command-kt"]}
    cluster.submit("t3", *make_job("t3", [missing]))
    secret = sh("finish", "true", env=[{"name": "K", "valueFrom": {"secretKeyRef": {}}}])
    cluster.submit("t4", *make_job("t4", [secret]))
    never = sh(
        "sidecar",
        "sleep 300",
        restartPolicy="Always",
        startupProbe={"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2},
    )
    cluster.submit("t5", *make_job("t5", [sh("finish", "true")], [never, sh("next", "true")]))
    for task, expect in (("t3", "executable file not found"), ("t4", "valueFrom")):
        rec.until(job_done(task))
        terminated = _statuses(_pod(cluster, task))["finish"]["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
        assert expect in terminated["message"]
    rec.until(job_done("t5"))
    pod = _pod(cluster, "t5")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["reason"] == "StartupProbeFailed"
    assert _statuses(pod)["next"]["state"] == {"waiting": {"reason": "PodInitializing"}}


def test_mounts_env_working_dir_and_a_read_only_host_root(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    rec = Recorder(cluster)
    prepare = sh("prepare", "mkdir -p /w/fs && echo input > /w/fs/in.txt", [("work", "/w")])
    script = """
        set -e
        echo "$FOO $BAZ $PATH $(pwd)"
        cat /ref/in.txt
        touch /data/a /mnt/x/a /usr/local/kt-test/a /tmp/t
        test "$(ls -A /tmp)" = t && echo fresh-tmp
        touch /usr/kt-x 2>/dev/null && echo usr-writable || echo usr-read-only
        touch /kt-top 2>/dev/null && echo root-writable || echo root-read-only
        touch /ro/x 2>/dev/null && echo ro-writable || echo ro-read-only
        cat /etc/kt/key; echo
        ls /usr/local | tr '\\n' ' '
    """
    mounts = [
        {"name": "work", "mountPath": "/data", "subPath": "fs/data"},
        {"name": "work", "mountPath": "/mnt/x", "subPath": "fs/mnt/x"},
        {"name": "work", "mountPath": "/usr/local/kt-test", "subPath": "fs/usr-local"},
        {"name": "work", "mountPath": "/ref/in.txt", "subPath": "fs/in.txt"},
        {"name": "work", "mountPath": "/ro", "subPath": "fs/ro", "readOnly": True},
        {"name": "cm", "mountPath": "/etc/kt"},
    ]
    main = {
        "name": "finish",
        "command": ["/bin/busybox", "sh", "-c", script],
        "env": [{"name": "FOO", "value": "foo"}, {"name": "BAZ", "value": "$(FOO)-baz"}],
        "workingDir": "/mnt/kt-wd",
        "volumeMounts": mounts,
    }
    volumes = [
        {"name": "work", "emptyDir": {}},
        {
            "name": "cm",
            "configMap": {"name": "tes-t6", "items": [{"key": "task.json", "path": "key"}]},
        },
    ]
    cluster.submit("t6", *make_job("t6", [main], [prepare], volumes))
    done = rec.until(job_done("t6"))
    log = cluster.read_log("t6", "finish")
    assert _condition(done, "Complete"), log
    lines = log.splitlines()
    assert lines[0] == f"foo foo-baz {sandbox.DEFAULT_PATH} /mnt/kt-wd"
    assert lines[1:7] == [
        "input",
        "fresh-tmp",
        "usr-read-only",
        "root-read-only",
        "ro-read-only",
        '{"id": "t6"}',
    ]
    # The host's own /usr/local entries are still there beside the new mount point.
    assert set(lines[7].split()) == {*os.listdir("/usr/local"), "kt-test"}
    work = next(tmp_path.glob("rt0/*/volumes/work"))
    for created in ("fs/data/a", "fs/mnt/x/a", "fs/usr-local/a"):
        assert (work / created).exists()
    assert not Path("/usr/kt-x").exists() and not Path("/kt-top").exists()


def _host_pids(token: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def test_fifo_admission_waits_for_quota_and_delete_kills_at_once(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(cpu=1)
    rec = Recorder(cluster)
    side = sh("helper", "sleep 3302", restartPolicy="Always")
    first = sh("finish", "sleep 3303 & sleep 3301")
    cluster.submit("a1", *make_job("a1", [first], [side], cpu="1"))
    cluster.submit("a1", *make_job("a1", [first], [side], cpu="1"))  # idempotent
    cluster.submit("a2", *make_job("a2", [sh("finish", "sleep 0.3")], cpu="1"))
    cluster.submit("a3", *make_job("a3", [sh("finish", "true")], cpu="1"))
    rec.until(
        lambda o: (
            o.task_id == "a1"
            and o.kind == "Pod"
            and o.obj is not None
            and o.obj["status"]["phase"] == "Running"
        )
    )
    pending = rec.until(
        lambda o: (
            o.task_id == "a2"
            and o.kind == "Workload"
            and objects.condition(o.obj, "QuotaReserved") is not None
        )
    )
    reserved = objects.condition(pending.obj, "QuotaReserved")
    assert (
        reserved is not None and reserved["status"] == "False" and reserved["reason"] == "Pending"
    )
    assert reserved["message"] == (
        "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor "
        "local, 1 more needed"
    )
    assert [o.kind for o in cluster.snapshot() if o.task_id == "a1"].count("Job") == 1
    jobs = {o.task_id: o.obj for o in cluster.snapshot() if o.kind == "Job"}
    assert jobs["a2"] is not None and jobs["a2"]["spec"]["suspend"] is True

    deadline = time.monotonic() + 5
    tokens = (b"sleep\x003301\x00", b"sleep\x003302\x00", b"sleep\x003303\x00")
    while (
        len(pids := [p for t in tokens for p in _host_pids(t)]) < 3 and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert len(pids) >= 3
    started = time.monotonic()
    cluster.delete("a1")
    assert time.monotonic() - started < 2
    assert not [pid for pid in pids if _alive(pid)]
    assert not cluster.exists("a1")
    gone = [(o.kind, o.obj) for o in cluster.watch(0.2) if o.task_id == "a1"]
    rec.seen += [Observation("a1", k, "", o) for k, o in gone]
    assert ("Job", None) in gone and ("Pod", None) in gone and ("Workload", None) in gone
    cluster.delete("a1")  # idempotent
    cluster.delete("never-existed")

    # a2 is admitted once a1's quota is free; a3 only after a2 finished (StrictFIFO).
    rec.until(admitted("a2"))
    rec.until(job_done("a3"))
    assert rec.index(job_done("a2")) < rec.index(admitted("a3"))


def test_construction_says_to_install_bubblewrap(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"apt-get install bubblewrap"):
        LocalCluster(tmp_path, 1, GiB, bwrap="no-such-bwrap-kt")


def test_submit_refuses_invalid_objects(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    configmap, job = make_job("v1", [sh("finish", "true")])
    with pytest.raises(PermanentError, match="does not match"):
        cluster.submit("other", configmap, job)
    job["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "lots"}}
    with pytest.raises(PermanentError, match="quantity"):
        cluster.submit("v1", configmap, job)
    assert not cluster.exists("v1") and cluster.snapshot() == []


def test_a_sidecar_that_exits_is_restarted(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    rec = Recorder(cluster)
    # The first start exits 1; kubelet restarts a native sidecar whatever restartPolicy says.
    side = sh(
        "sequencer",
        "if [ -e /tes/started ]; then echo second; touch /tes/again; "
        "trap 'exit 0' TERM; sleep 300 & wait; else touch /tes/started; echo first; exit 1; fi",
        restartPolicy="Always",
    )
    main = sh("finish", "while [ ! -e /tes/again ]; do sleep 0.05; done")
    cluster.submit("r1", *make_job("r1", [main], [side]))
    done = rec.until(job_done("r1"))
    assert _condition(done, "Complete")
    status = _statuses(_pod(cluster, "r1"))["sequencer"]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert cluster.read_log("r1", "sequencer") == "second\n"
    previous = next(tmp_path.glob("rt0/*/logs/sequencer.previous.log"))
    assert previous.read_text() == "first\n"


def test_deadline_and_ttl_are_enforced(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    rec = Recorder(cluster)
    configmap, job = make_job("d1", [sh("finish", "trap 'exit 143' TERM; sleep 30 & wait")])
    job["spec"]["activeDeadlineSeconds"] = 1
    cluster.submit("d1", configmap, job)
    configmap, job = make_job("d2", [sh("finish", "true")])
    job["spec"]["ttlSecondsAfterFinished"] = 0
    cluster.submit("d2", configmap, job)

    done = rec.until(job_done("d1"))
    failed = objects.condition(done.obj, "Failed")
    assert failed is not None and failed["reason"] == "DeadlineExceeded"
    pod = _pod(cluster, "d1")
    assert pod["status"]["phase"] == "Failed" and pod["status"]["reason"] == "DeadlineExceeded"
    assert _statuses(pod)["finish"]["state"]["terminated"]["exitCode"] == 143
    rec.until(lambda o: o.task_id == "d2" and o.kind == "Job" and o.obj is None)
    assert not cluster.exists("d2")


def test_a_restarted_runtime_finds_its_tasks_again(tmp_path: Path, bwrap: str) -> None:
    first = LocalCluster(tmp_path / "rt", 1, GiB, bwrap=bwrap)
    rec = Recorder(first)
    first.submit("p1", *make_job("p1", [sh("finish", "sleep 3304")], cpu="1"))
    first.submit("p2", *make_job("p2", [sh("finish", "echo later")], cpu="1"))
    rec.until(
        lambda o: (
            o.task_id == "p1"
            and o.kind == "Pod"
            and o.obj is not None
            and o.obj["status"]["phase"] == "Running"
        )
    )
    first.close()
    assert not [pid for pid in _host_pids(b"sleep\x003304\x00") if _alive(pid)]

    second = LocalCluster(tmp_path / "rt", 1, GiB, bwrap=bwrap)
    try:
        with pytest.raises(PermanentError, match="another kueue-tes process"):
            LocalCluster(tmp_path / "rt", 1, GiB, bwrap=bwrap)
        rec = Recorder(second)
        done = rec.until(job_done("p2"))
        assert _condition(done, "Complete") and second.read_log("p2", "finish") == "later\n"
        pod = _pod(second, "p1")
        assert pod["status"]["phase"] == "Failed"
        assert pod["status"]["reason"] == "LocalRuntimeRestarted"
        assert any(o.task_id == "p1" and o.kind == "Job" for o in second.snapshot())
    finally:
        second.close()
