"""The sequencer with the real runner, its pod simulated by hand (kubelet's order, no sandbox)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from tests.conftest import ROOT
from worker import jobspec
from worker.report import Report, read_report
from worker.sequencer.setup import RUNNER

#: Processes the tests started; whatever a failed test leaves is killed after it.
_STARTED: list[subprocess.Popen[Any]] = []


class Pod:
    """Control, work and task directories of one simulated task pod."""

    def __init__(
        self, tmp_path: Path, task: dict[str, Any], file_roots: str = "", layout: str = "init"
    ) -> None:
        self.control, self.work, self.task_dir = (tmp_path / n for n in ("tes", "work", "task"))
        for folder in (self.control, self.work, self.task_dir):
            folder.mkdir()
        settings = Settings(data_dir=tmp_path, mongo_uri=None, redis_url=None)
        for name, text in jobspec.build_configmap(task, settings)["data"].items():
            (self.task_dir / name).write_text(text)
        self.task, self.file_roots, self.layout = task, file_roots, layout
        self.sequencer: subprocess.Popen[str] | None = None
        self.env: dict[str, str] = {}  # more of the sequencer's environment

    def local(self, path: str) -> str:
        """Where a container path lives in the work volume."""
        return str(self.work / "fs" / path.lstrip("/")) if path else ""

    def start(self) -> None:
        """Run setup as the job spec has it for this layout, then start the sequencer."""
        count = str(len(self.task["executors"]))
        gates = ["--gates", "--plan", str(self.task_dir / "plan.json"), "--work", str(self.work)]
        gates = gates if self.layout == "ready" else []
        subprocess.run(
            [sys.executable, "-m", "worker.sequencer.setup", str(self.control)]
            + ["--executors", count, *gates],
            check=True,
            cwd=ROOT,
        )
        env = dict(
            os.environ,
            KUEUE_TES_CONTROL_DIR=str(self.control),
            KUEUE_TES_WORK_DIR=str(self.work),
            KUEUE_TES_TASK_DIR=str(self.task_dir),
            KUEUE_TES_SEQUENCER_EXIT="1",
            KUEUE_TES_FILE_ROOTS=self.file_roots,
            **self.env,
        )
        self.sequencer = subprocess.Popen(
            [sys.executable, "-m", "worker.sequencer"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _STARTED.append(self.sequencer)

    def runner(self, index: int, wrap: list[str] | None = None) -> subprocess.Popen[bytes]:
        """Start executor ``index``'s container: the runner under busybox, as in the pod."""
        executor = self.task["executors"][index]
        command = jobspec.runner_command(index, executor)
        command[:3] = [
            str(self.control / "bin" / "busybox"),
            "sh",
            str(self.control / "bin" / "runner.sh"),
        ]
        command[3] = str(self.control)
        command[5:8] = [self.local(executor.get(k) or "") for k in ("stdin", "stdout", "stderr")]
        cwd = self.local(executor["workdir"]) if executor.get("workdir") else self.work
        proc = subprocess.Popen(
            [*(wrap or []), *command],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: a test can kill a runner and its command
        )
        _STARTED.append(proc)
        return proc

    def finish(self) -> subprocess.Popen[bytes]:
        """Start `finish` with the job spec's script."""
        script = jobspec.FINISH_SCRIPT.replace(jobspec.CONTROL, str(self.control))
        proc = subprocess.Popen([str(self.control / "bin" / "busybox"), "sh", "-c", script])
        _STARTED.append(proc)
        return proc

    def wait_for(self, name: str) -> None:
        """Wait until the sequencer has written /tes/``name``."""
        assert self.sequencer is not None
        deadline = time.monotonic() + 20
        while not (self.control / name).exists():
            assert time.monotonic() < deadline, f"no {name}"
            assert self.sequencer.poll() is None, self.sequencer.communicate()
            time.sleep(0.01)

    def run(self) -> tuple[Report, str]:
        """Run the pod in kubelet's order for its layout; return the report and the verdict.

        init: each runner after the one before it, once stage-in is done (the startup probe).
        ready: every runner and finish at once, right away; none may end before the verdict.
        """
        self.start()
        if self.layout == "init":
            self.wait_for("staged")
            for index in range(len(self.task["executors"])):
                runner = self.runner(index)
                runner.communicate(timeout=30)
                assert runner.returncode == 0
            finish = self.finish()
        else:
            runners = [self.runner(i) for i in range(len(self.task["executors"]))]
            finish = self.finish()
            deadline = time.monotonic() + 30
            while not (self.control / "verdict").exists():
                assert time.monotonic() < deadline, "no verdict"
                ended = [r.returncode for r in [*runners, finish] if r.poll() is not None]
                assert not ended, f"a container ended before the verdict: {ended}"
                time.sleep(0.005)
            for runner in runners:
                runner.communicate(timeout=10)
                assert runner.returncode == 0
        finish.wait(timeout=10)
        report, verdict = self.report()
        assert finish.returncode == {"COMPLETE": 0, "EXECUTOR_ERROR": 1}.get(verdict, 2)
        return report, verdict

    def report(self) -> tuple[Report, str]:
        """Wait for the sequencer to end; return its report and the verdict."""
        assert self.sequencer is not None
        out, err = self.sequencer.communicate(timeout=30)
        assert self.sequencer.returncode == 0, err
        assert "Traceback" not in out + err
        return read_report(out), (self.control / "verdict").read_text()


def _task(**extra: Any) -> dict[str, Any]:
    task: dict[str, Any] = {"id": "01jb0000000000000000000009", "state": "QUEUED"}
    task.update(extra)
    return task


LAYOUTS = pytest.mark.parametrize("layout", ["init", "ready"])


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # a runner leads its group: its command too
            proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def _busybox() -> None:
    if shutil.which("busybox") is None:
        if os.environ.get("CI"):
            pytest.fail("busybox is not installed (.ci/run installs busybox-static)")
        pytest.skip("busybox is not installed")
    assert RUNNER.exists()


@LAYOUTS
def test_stage_in_executors_stage_out(tmp_path: Path, layout: str) -> None:
    """Inline and file:// inputs, two executors, outputs to a file:// root; COMPLETE."""
    shared = tmp_path / "shared"
    (shared / "in").mkdir(parents=True)
    (shared / "in" / "ref.txt").write_text("reference\n")
    task = _task(
        inputs=[
            {"path": "/data/in.txt", "content": "hello\n"},
            {"path": "/data/ref.txt", "url": f"file://{shared}/in/ref.txt"},
        ],
        outputs=[
            {
                "path": "/data/out/*.txt",
                "path_prefix": "/data/out",
                "url": f"file://{shared}/results",
            }
        ],
        executors=[
            {
                "image": "x",
                "command": ["cat", "in.txt", "ref.txt"],
                "workdir": "/data",
                "stdout": "/data/out/a.txt",
            },
            {"image": "x", "command": ["sh", "-c", "echo oops >&2; exit 3"], "ignore_error": True},
        ],
    )
    report, verdict = Pod(tmp_path, task, str(shared), layout).run()
    assert verdict == "COMPLETE" and report.verdict is not None
    assert report.verdict.value == "COMPLETE"
    assert [e["exit_code"] for e in report.executors] == [0, 3]
    assert report.executors[0]["stdout"] == "hello\nreference\n"
    assert report.executors[1]["stderr"] == "oops\n"
    assert (shared / "results" / "a.txt").exists()
    assert report.outputs[0]["url"] == f"file://{shared}/results/a.txt"


@LAYOUTS
def test_failed_input_is_system_error_and_skips_executors(tmp_path: Path, layout: str) -> None:
    """A file:// input outside the roots: readable reason, executors skipped, SYSTEM_ERROR."""
    task = _task(
        inputs=[{"path": "/data/x", "url": "file:///etc/hostname"}],
        executors=[{"image": "x", "command": ["touch", str(tmp_path / "ran")]}],
    )
    report, verdict = Pod(tmp_path, task, str(tmp_path / "nowhere"), layout).run()
    assert verdict == "SYSTEM_ERROR"
    assert not (tmp_path / "ran").exists() and report.executors == []
    assert any("/etc/hostname" in line and "root" in line for line in report.system_logs)


@LAYOUTS
def test_executor_error_still_uploads_outputs(tmp_path: Path, layout: str) -> None:
    """A failing executor ends EXECUTOR_ERROR, later ones skip, outputs are still uploaded."""
    shared = tmp_path / "shared"
    shared.mkdir()
    task = _task(
        outputs=[
            {"path": "/data/log.txt", "url": f"file://{shared}/log.txt"},
            {"path": "/data/missing.txt", "url": f"file://{shared}/missing.txt"},
        ],
        executors=[
            {"image": "x", "command": ["no-such-command-kt"], "stderr": "/data/log.txt"},
            {"image": "x", "command": ["touch", str(tmp_path / "ran")]},
        ],
    )
    report, verdict = Pod(tmp_path, task, str(shared), layout).run()
    assert verdict == "EXECUTOR_ERROR"
    assert report.executors[0]["exit_code"] == 127 and len(report.executors) == 1
    assert not (tmp_path / "ran").exists()
    assert (shared / "log.txt").exists()
    assert any("missing.txt" in line for line in report.system_logs)
    assert json.dumps(report.outputs)  # OutputFileLogs are plain JSON


# -- the ready layout: turns -------------------------------------------------------------------


def test_ready_runners_take_turns_after_stage_in(tmp_path: Path) -> None:
    """All runners start before stage-in ends; executors run one after another, after it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("staged\n")
    order = tmp_path / "order.txt"
    staged = tmp_path / "work" / "fs" / "data" / "in.txt"  # where the runners see the input
    step = f"grep -q staged {staged} && echo {{0}} >> {order} && sleep 0.{{0}}"
    task = _task(
        inputs=[{"path": "/data/in.txt", "url": f"file://{shared}/in.txt"}],
        executors=[{"image": "x", "command": ["sh", "-c", step.format(i)]} for i in range(3)],
    )
    pod = Pod(tmp_path, task, str(shared), "ready")
    pod.start()
    runners = [pod.runner(0), pod.runner(1)]  # before stage-in: they wait for their turns
    pod.wait_for("staged")
    assert (pod.control / "exec" / "0" / "turn").exists()
    pod.wait_for("exec/0/exit_code")
    # executor 2's container starts late (its image was still pulling): not an error
    assert not (pod.control / "exec" / "2" / "start").exists()
    runners.append(pod.runner(2))
    pod.wait_for("verdict")
    for runner in runners:
        runner.communicate(timeout=10)
    report, verdict = pod.report()
    assert verdict == "COMPLETE"
    assert order.read_text() == "0\n1\n2\n"
    times = [t for e in report.executors for t in (e["start_time"], e["end_time"])]
    assert times == sorted(times) and len(report.executors) == 3


# -- item 8: a runner that never writes its exit code -------------------------------------------


@LAYOUTS
def test_killed_runner_ends_the_attempt_in_system_error(tmp_path: Path, layout: str) -> None:
    """The runner of a running executor is killed: SYSTEM_ERROR at once, saying what to check."""
    task = _task(
        executors=[
            {"image": "x", "command": ["sleep", "300"]},
            {"image": "x", "command": ["touch", str(tmp_path / "ran")]},
        ]
    )
    pod = Pod(tmp_path, task, layout=layout)
    pod.start()
    pod.wait_for("staged")
    first = pod.runner(0)
    later = [pod.runner(1)] if layout == "ready" else []
    pod.wait_for("exec/0/start")
    os.killpg(first.pid, signal.SIGKILL)  # the container dies with its runner (OOM, node)
    killed = time.monotonic()
    if layout == "init":
        first.wait()
        later = [pod.runner(1)]  # (kubelet fails such a pod; were it to go on, 1 must skip)
    pod.wait_for("verdict")
    assert time.monotonic() - killed < 5, "the sequencer must notice at once, not on a timer"
    for runner in later:
        runner.communicate(timeout=10)
    report, verdict = pod.report()
    assert verdict == "SYSTEM_ERROR" and report.verdict is not None
    assert report.verdict.value == "SYSTEM_ERROR"
    assert not (tmp_path / "ran").exists() and report.executors == []
    assert any(
        line.startswith("executor 0 ended without an exit code: its runner was killed")
        and "kubectl describe pod" in line
        for line in report.system_logs
    ), report.system_logs


@LAYOUTS
def test_unwritable_control_volume_ends_the_attempt(tmp_path: Path, layout: str) -> None:
    """A runner that cannot write /tes says so; the sequencer ends the attempt naming the fix."""
    if subprocess.run(["unshare", "-rm", "true"], check=False).returncode != 0:
        pytest.skip("no user namespaces here to mount the control volume read-only")
    task = _task(executors=[{"image": "x", "command": ["touch", str(tmp_path / "ran")]}])
    pod = Pod(tmp_path, task, layout=layout)
    pod.start()
    pod.wait_for("staged")
    control = str(pod.control)
    read_only = ["unshare", "-rm", "sh", "-c", 'mount -o bind,ro "$0" "$0" && exec "$@"', control]
    runner = pod.runner(0, wrap=read_only)
    _, err = runner.communicate(timeout=10)
    assert runner.returncode == 0 and b"is not writable" in err
    pod.wait_for("verdict")
    report, verdict = pod.report()
    assert verdict == "SYSTEM_ERROR" and not (tmp_path / "ran").exists()
    expected = f"executor 0 did not run: its runner stopped (control directory {control} is not"
    assert any(
        line.startswith(expected) and "runAsUser and fsGroup" in line for line in report.system_logs
    ), report.system_logs


def test_ready_stage_in_timeout_ends_the_attempt(tmp_path: Path) -> None:
    """No probe bounds stage-in in the ready layout: the sequencer does, and says so."""
    from tests.integration.test_e2e_layouts import HeldInput

    with HeldInput() as held:
        task = _task(
            inputs=[{"path": "/data/in.txt", "url": held.url}],
            executors=[{"image": "x", "command": ["touch", str(tmp_path / "ran")]}],
        )
        pod = Pod(tmp_path, task, layout="ready")
        pod.env["KUEUE_TES_STAGE_IN_TIMEOUT_SECONDS"] = "1"
        pod.start()
        runner, finish = pod.runner(0), pod.finish()
        pod.wait_for("verdict")
        held.release.set()  # the abandoned download may end now; the sequencer can exit
        runner.communicate(timeout=10)
        assert finish.wait(timeout=10) == 2
        report, verdict = pod.report()
    assert verdict == "SYSTEM_ERROR" and not (tmp_path / "ran").exists()
    assert report.system_logs[0] == (
        "stage-in took longer than 1 s (KUEUE_TES_STAGE_IN_TIMEOUT_SECONDS); check that the "
        "inputs' servers answer, or ask the operator for more time"
    ), report.system_logs
