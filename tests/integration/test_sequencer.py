"""The sequencer with the real runner, its pod simulated by hand (kubelet's order, no sandbox)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from tests.conftest import ROOT
from worker import jobspec
from worker.report import Report, read_report
from worker.sequencer.setup import RUNNER


class Pod:
    """Control, work and task directories of one simulated task pod."""

    def __init__(self, tmp_path: Path, task: dict[str, Any], file_roots: str = "") -> None:
        self.control, self.work, self.task_dir = (tmp_path / n for n in ("tes", "work", "task"))
        for folder in (self.control, self.work, self.task_dir):
            folder.mkdir()
        settings = Settings(data_dir=tmp_path, mongo_uri=None, redis_url=None)
        for name, text in jobspec.build_configmap(task, settings)["data"].items():
            (self.task_dir / name).write_text(text)
        self.task, self.file_roots = task, file_roots

    def local(self, path: str) -> str:
        """Where a container path lives in the work volume."""
        return str(self.work / "fs" / path.lstrip("/")) if path else ""

    def run(self) -> tuple[Report, str]:
        """Run setup, the sequencer and each executor in kubelet's order; return the report."""
        subprocess.run(
            [sys.executable, "-m", "worker.sequencer.setup", str(self.control)],
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
        )
        sequencer = subprocess.Popen(
            [sys.executable, "-m", "worker.sequencer"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not (self.control / "staged").exists():
            assert time.monotonic() < deadline and sequencer.poll() is None, sequencer.stderr
            time.sleep(0.02)
        for index, executor in enumerate(self.task["executors"]):
            command = jobspec.runner_command(index, executor)
            command[:3] = [
                str(self.control / "bin" / "busybox"),
                "sh",
                str(self.control / "bin" / "runner.sh"),
            ]
            command[3] = str(self.control)
            command[5:8] = [
                self.local(executor.get(k) or "") for k in ("stdin", "stdout", "stderr")
            ]
            cwd = self.local(executor["workdir"]) if executor.get("workdir") else self.work
            subprocess.run(command, check=True, cwd=cwd, capture_output=True)
        out, err = sequencer.communicate(timeout=30)
        assert sequencer.returncode == 0, err
        assert "Traceback" not in out
        return read_report(out), (self.control / "verdict").read_text()


def _task(**extra: Any) -> dict[str, Any]:
    task: dict[str, Any] = {"id": "01jb0000000000000000000009", "state": "QUEUED"}
    task.update(extra)
    return task


@pytest.fixture(autouse=True)
def _busybox() -> None:
    if shutil.which("busybox") is None:
        if os.environ.get("CI"):
            pytest.fail("busybox is not installed (.ci/run installs busybox-static)")
        pytest.skip("busybox is not installed")
    assert RUNNER.exists()


def test_stage_in_executors_stage_out(tmp_path: Path) -> None:
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
    report, verdict = Pod(tmp_path, task, file_roots=str(shared)).run()
    assert verdict == "COMPLETE" and report.verdict is not None
    assert report.verdict.value == "COMPLETE"
    assert [e["exit_code"] for e in report.executors] == [0, 3]
    assert report.executors[0]["stdout"] == "hello\nreference\n"
    assert report.executors[1]["stderr"] == "oops\n"
    assert (shared / "results" / "a.txt").exists()
    assert report.outputs[0]["url"] == f"file://{shared}/results/a.txt"


def test_failed_input_is_system_error_and_skips_executors(tmp_path: Path) -> None:
    """A file:// input outside the roots: readable reason, executors skipped, SYSTEM_ERROR."""
    task = _task(
        inputs=[{"path": "/data/x", "url": "file:///etc/hostname"}],
        executors=[{"image": "x", "command": ["touch", str(tmp_path / "ran")]}],
    )
    report, verdict = Pod(tmp_path, task, file_roots=str(tmp_path / "nowhere")).run()
    assert verdict == "SYSTEM_ERROR"
    assert not (tmp_path / "ran").exists() and report.executors == []
    assert any("/etc/hostname" in line and "root" in line for line in report.system_logs)


def test_executor_error_still_uploads_outputs(tmp_path: Path) -> None:
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
    report, verdict = Pod(tmp_path, task, file_roots=str(shared)).run()
    assert verdict == "EXECUTOR_ERROR"
    assert report.executors[0]["exit_code"] == 127 and len(report.executors) == 1
    assert not (tmp_path / "ran").exists()
    assert (shared / "log.txt").exists()
    assert any("missing.txt" in line for line in report.system_logs)
    assert json.dumps(report.outputs)  # OutputFileLogs are plain JSON
