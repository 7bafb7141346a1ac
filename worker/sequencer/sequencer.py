"""The sequencer: stage in, follow the executors, stage out, report (design section 8).

It runs as the task pod's native sidecar. Every failure ends as a SYSTEM_ERROR report with a
readable reason; a traceback is never its last word.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.sequencer.report import Report, now
from worker.sequencer.runners import Runners

if TYPE_CHECKING:
    from app.settings import Settings
    from worker.sequencer.filers import FilerConfig
    from worker.sequencer.filers import Outcome as Transfer
    from worker.sequencer.outputs import OutputFileLogDict

# The settings, the filers and the task models (all pydantic) are imported where a task has
# inputs or outputs: a task with neither starts its first executor ~0.2 s sooner
# (docs/performance.md).

log = logging.getLogger(__name__)

TAIL_BYTES = 64 * 1024
POLL_SECONDS = 0.05  # without life FIFOs (a control volume setup did not prepare)
WAIT_SECONDS = 1.0  # a safeguard: runners' lines and ends wake the sequencer at once
_FICLONE = 0x40049409  # the ioctl that shares a file's blocks (btrfs, XFS)
Json = dict[str, Any]


def filer_config(settings: Settings) -> FilerConfig:
    """Return the filers' configuration from the settings."""
    from worker.sequencer.filers import FilerConfig

    return FilerConfig(
        file_roots=tuple(settings.file_roots),
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        s3_path_style=settings.s3_path_style,
        http_put=settings.http_put,
        retries=settings.transfer_retries,
        backoff_seconds=settings.transfer_backoff_seconds,
        multipart_threshold_bytes=settings.s3_multipart_threshold_bytes,
        timeout_seconds=settings.transfer_timeout_seconds,
    )


@dataclass
class Paths:
    """Where the sequencer finds things in its container."""

    control: Path = Path("/tes")
    work: Path = Path("/kueue-tes/work")
    task_dir: Path = Path("/kueue-tes/task")

    def local(self, container_path: str) -> Path:
        """Return where a path of the executors' containers lives in the work volume."""
        return self.work / "fs" / container_path.lstrip("/")


@dataclass
class Outcome:
    """What the attempt came to, as the sequencer sees it."""

    system_logs: list[str] = field(default_factory=list)
    stage_failed: bool = False
    executor_failed: bool = False
    runner_lost: bool = False  # a runner ended without an exit code

    def verdict(self) -> str:
        """Return the TES state the attempt ends in."""
        if self.stage_failed or self.runner_lost:
            return "SYSTEM_ERROR"
        return "EXECUTOR_ERROR" if self.executor_failed else "COMPLETE"


class Sequencer:
    """One attempt of one task, from inside its pod."""

    def __init__(self, paths: Paths, report: Report, runners: Runners | None = None):
        """Prepare to run the task whose files are under ``paths``."""
        self.paths, self.report = paths, report
        self.runners = runners or Runners.open(paths.control)
        self.outcome = Outcome()
        self.lost: dict[int, str] = {}  # runners that ended without an exit code → why

    @functools.cached_property
    def settings(self) -> Settings:
        """The settings, from the environment, read on first use."""
        from app.settings import Settings

        return Settings()

    @functools.cached_property
    def config(self) -> FilerConfig:
        """The filers' configuration (imports them)."""
        return filer_config(self.settings)

    @property
    def parallelism(self) -> int:
        """How many transfers run at once."""
        return self.settings.transfer_parallelism

    def _mark(self, name: str, text: str = "") -> None:
        target = self.paths.control / name
        temporary = target.with_name(f".{name}.tmp")
        temporary.write_text(text)
        temporary.replace(target)

    def run(self) -> str:
        """Run the attempt and return the verdict; the report is printed as it goes."""
        started = self.paths.control / "sequencer.started"
        if started.exists():
            self._mark("abort")
            self._mark("staged")
            return self._verdict(["the sequencer was restarted mid-task; rerun the task"], True)
        started.touch()
        self.report.event("started", time=now())
        try:
            task = json.loads((self.paths.task_dir / "task.json").read_text())
            plan = json.loads((self.paths.task_dir / "plan.json").read_text())
        except (OSError, ValueError) as exc:
            self._mark("abort")
            self._mark("staged")
            return self._verdict([f"cannot read the task from its ConfigMap: {exc}"], True)
        self._stage_in(task, plan)
        self._follow(task, int(plan.get("executors", len(task.get("executors", [])))))
        self._stage_out(task)
        return self._verdict([], self.outcome.stage_failed)

    def _verdict(self, notes: list[str], failed: bool) -> str:
        self.outcome.stage_failed |= failed
        self.outcome.system_logs += notes
        verdict = self.outcome.verdict()
        self.report.event("verdict", state=verdict, time=now(), system_logs=notes)
        self._mark("verdict", verdict)
        self.runners.wake_all()
        return verdict

    # -- stage in ---------------------------------------------------------------------------

    def _stage_in(self, task: Json, plan: Json) -> None:
        items = task.get("inputs") or []
        errors = []
        if items:
            from worker.sequencer import filers

            jobs = [lambda item=item: self._fetch(item) for item in items]
            transfers = self._within_timeout(lambda: filers.transfer_all(jobs, self.parallelism))
            if transfers is None:
                limit = self.settings.stage_in_timeout_seconds
                errors.append(
                    f"stage-in took longer than {limit} s (KUEUE_TES_STAGE_IN_TIMEOUT_SECONDS); "
                    "check that the inputs' servers answer, or ask the operator for more time"
                )
                transfers = []
            for item, outcome in zip(items, transfers, strict=False):
                if outcome.error is not None:
                    where = filers.redact(item["url"]) if item.get("url") else "inline content"
                    errors.append(f"input {item['path']} from {where}: {outcome.error}")
        try:
            self._prepare_mounts(plan)
        except OSError as exc:
            errors.append(f"cannot prepare the task's directories: {exc}")
        if errors:
            self._mark("abort")
            self.outcome.stage_failed = True
        self.report.event("staged", ok=not errors, time=now(), system_logs=errors)
        self.outcome.system_logs += errors
        self._mark("staged")
        self.runners.open_gate(0)

    def _within_timeout(self, transfer: Callable[[], list[Transfer[None]]]) -> Any:
        # In the init layout kubelet's startup probe also bounds stage-in; in the ready layout
        # only this does. Transfers still running then are left behind: the attempt ends.
        done: list[list[Transfer[None]]] = []
        worker = threading.Thread(target=lambda: done.append(transfer()), daemon=True)
        worker.start()
        worker.join(self.settings.stage_in_timeout_seconds)
        return done[0] if done else None

    def _fetch(self, item: Json) -> None:
        from app.models import FileType
        from worker.sequencer import filers

        dest = self.paths.local(item["path"])
        if item.get("content") or not item.get("url"):  # TES: non-empty content wins over url
            filers.write_content(item.get("content") or "", dest)
            return
        kind = FileType(item.get("type") or "FILE")
        filers.download(item["url"], dest, kind, self.config)

    def _prepare_mounts(self, plan: Json) -> None:
        # Kubelet would create a missing subPath as a directory: make each mount what it is.
        for number, mount in enumerate(plan.get("mounts", ())):
            local = self.paths.local(mount["path"])
            if mount["kind"] == "dir":
                local.mkdir(parents=True, exist_ok=True)
                local.chmod(0o777)  # executors may run as any user
            else:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.touch(exist_ok=True)
                pinned = self.paths.work / "pins" / str(number)
                if pinned.exists():
                    _repin(local, pinned)

    # -- executors --------------------------------------------------------------------------

    def _follow(self, task: Json, count: int) -> None:
        executors = task.get("executors") or []
        for index in range(count):
            folder = self.paths.control / "exec" / str(index)
            while not _done(folder) and index not in self.lost:
                self._listen(count, WAIT_SECONDS if self.runners.watches(index) else POLL_SECONDS)
            if index in self.lost and not _done(folder):
                self.runners.open_gate(index + 1)  # the lost runner cannot: the next one skips
                continue
            if (folder / "skipped").exists():
                self.report.event("executor", index=index, skipped=True)
                continue
            code = _read_int(folder / "exit_code")
            ignore = bool(index < len(executors) and executors[index].get("ignore_error"))
            if code != 0 and not ignore:
                self.outcome.executor_failed = True
            self.report.event(
                "executor",
                index=index,
                exit_code=code,
                start_time=_read(folder / "start"),
                end_time=_read(folder / "end"),
                stdout=_tail(folder / "stdout.tail"),
                stderr=_tail(folder / "stderr.tail"),
            )

    def _listen(self, count: int, timeout: float) -> None:
        """Wait for the runners' news: an executor started, ended, or a runner is gone."""
        if not self.runners.fds:
            time.sleep(timeout)
            return
        for index, line in self.runners.wait(timeout):
            folder = self.paths.control / "exec" / str(index)
            if line == "start":
                self.report.event("running", index=index, start_time=_read(folder / "start"))
            elif line == "" and not _done(folder) and index < count:
                self._lose(index)

    def _lose(self, index: int) -> None:
        """End the attempt for a runner that is gone without an exit code: say what to check."""
        why = self.runners.failure(index)
        if why is not None:
            text = (
                f"executor {index} did not run: its runner stopped ({why}); check that the "
                f"executor's user may write the control volume {self.paths.control} (an "
                "emptyDir: the image's USER, the pod's runAsUser and fsGroup)"
            )
        else:
            text = (
                f"executor {index} ended without an exit code: its runner was killed or crashed "
                "(the container was OOM-killed, evicted or stopped by the node); check the "
                "executor's container status and the pod's events (kubectl describe pod)"
            )
        log.warning("%s", text)
        self._mark("abort")
        self.lost[index] = text
        self.outcome.runner_lost = True
        self.outcome.system_logs.append(text)
        self.report.event("lost", index=index, time=now(), system_logs=[text])

    # -- stage out --------------------------------------------------------------------------

    def _stage_out(self, task: Json) -> None:
        if not task.get("outputs"):
            self.report.event("outputs", outputs=[], system_logs=[])
            return
        from app.models import Output
        from worker.sequencer import filers, outputs

        wanted = [Output.model_validate(o) for o in task["outputs"]]
        plan = outputs.plan_outputs(wanted, self.paths.local, self.paths.work)
        jobs = [lambda u=u: filers.upload(u.local_file, u.url, self.config) for u in plan.uploads]
        logs: list[OutputFileLogDict] = []
        errors: list[str] = []
        for upload, outcome in zip(
            plan.uploads, filers.transfer_all(jobs, self.parallelism), strict=True
        ):
            if outcome.error is None:
                logs.append(outputs.output_file_log(upload))
            else:
                where = filers.redact(upload.url)
                errors.append(f"output {upload.container_path} to {where}: {outcome.error}")
        if errors:
            self.outcome.stage_failed = True
        notes = plan.notes + errors
        self.outcome.system_logs += notes
        self.report.event("outputs", outputs=logs, system_logs=notes)


def _repin(path: Path, pinned: Path) -> None:
    """Put what staging left at ``path`` into the pinned inode that executors have bound.

    Downloads replace a file by renaming; the ready layout's executor containers hold the
    inode setup created. A reflink where the file system can, else an in-kernel copy.
    """
    if os.path.samefile(path, pinned):
        return
    with path.open("rb") as source, pinned.open("wb") as target:
        try:
            fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
        except OSError:
            shutil.copyfileobj(source, target, 1 << 20)
    shutil.copymode(path, pinned)
    linked = path.with_name(f".{path.name}.pin")
    linked.unlink(missing_ok=True)
    os.link(pinned, linked)
    linked.replace(path)


def _done(folder: Path) -> bool:
    return (folder / "exit_code").exists() or (folder / "skipped").exists()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _read_int(path: Path) -> int:
    text = _read(path)
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - TAIL_BYTES))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def main() -> int:
    """Entry point of the sequencer container."""
    logging.basicConfig(level="INFO", format="sequencer %(levelname)s %(name)s: %(message)s")
    # As the first process of its container SIGTERM would be ignored: end promptly instead.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    report = Report()
    paths = Paths(
        control=Path(os.environ.get("KUEUE_TES_CONTROL_DIR", "/tes")),
        work=Path(os.environ.get("KUEUE_TES_WORK_DIR", "/kueue-tes/work")),
        task_dir=Path(os.environ.get("KUEUE_TES_TASK_DIR", "/kueue-tes/task")),
    )
    # First of all: runners wait for their life FIFOs to be read before they go on.
    runners = Runners.open(paths.control)
    try:
        Sequencer(paths, report, runners).run()
    except Exception as exc:
        log.exception("sequencer failed")
        report.event(
            "verdict",
            state="SYSTEM_ERROR",
            time=now(),
            system_logs=[f"the sequencer failed: {type(exc).__name__}: {exc}"],
        )
        for name, text in (("abort", ""), ("staged", ""), ("verdict", "SYSTEM_ERROR")):
            with contextlib.suppress(OSError):
                (paths.control / name).write_text(text)
        runners.wake_all()
    if os.environ.get("KUEUE_TES_SEQUENCER_EXIT") == "1":
        return 0
    # A native sidecar that exits is restarted: stay until the pod ends and terminates us.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        signal.pause()
