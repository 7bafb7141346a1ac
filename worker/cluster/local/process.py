"""Sandboxed processes: starting, signalling and reaping bubblewrap, and checking it works."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.cluster.base import PermanentError
from worker.cluster.local import podstatus, sandbox

_INSTALL = "install bubblewrap (apt-get install bubblewrap)"


@dataclass
class Process:
    """One running sandbox of a container."""

    container: dict[str, Any]
    proc: subprocess.Popen[bytes]
    pidfd: int
    started_at: str
    termination_file: Path
    log_file: Path
    child: int | None = None

    def exit_code(self) -> int:
        """Return the container's exit code as a runtime reports it (128 + signal if killed)."""
        code = self.proc.returncode
        return code if code >= 0 else 128 - code


class Processes:
    """The running sandboxes of one pod by container name, and the pipe that wakes its runner.

    A start and :meth:`kill` exclude each other: kill either sees the new process or keeps it
    from starting. :meth:`wait` watches every process's pidfd and the pipe at once.
    """

    def __init__(self) -> None:
        """Start with nothing running."""
        self.running: dict[str, Process] = {}
        self.killed = False
        self._lock = threading.Lock()
        self._probe: subprocess.Popen[bytes] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def __contains__(self, name: object) -> bool:
        """Tell whether the container ``name`` runs."""
        return name in self.running

    def start(
        self,
        container: dict[str, Any],
        argv: list[str],
        log: Path,
        started_at: str,
        termination: Path,
        info_fd: int,
    ) -> Process | None:
        """Start a container's sandbox (:func:`spawn`); None once the pod is killed."""
        with self._lock:
            if self.killed:
                return None
            proc = spawn(argv, log, info_fd)
            running = Process(
                container, proc, os.pidfd_open(proc.pid), started_at, termination, log
            )
            self.running[str(container["name"])] = running
        return running

    def track_probe(self, proc: subprocess.Popen[bytes] | None) -> bool:
        """Keep a probe's process (None: it ended) for :meth:`kill`; False once killed."""
        with self._lock:
            self._probe = proc
            return not self.killed

    def kill(self) -> None:
        """Kill every process of the pod at once, for good, and wake the waiter."""
        with self._lock:
            self.killed = True
            pids = [p.proc.pid for p in self.running.values()]
            if self._probe is not None:
                pids.append(self._probe.pid)
        for pid in pids:
            killpg(pid)
        self.wake()

    def kill_one(self, name: str) -> None:
        """Kill the sandbox of container ``name``, if it runs."""
        running = self.running.get(name)
        if running is not None:
            killpg(running.proc.pid)

    def signal(self, name: str, sig: int) -> None:
        """Signal container ``name`` as kubelet does: its init, here the sandbox's PID 1."""
        running = self.running.get(name)
        if running is None:
            return
        if running.child is None:
            killpg(running.proc.pid, sig)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(running.child, sig)

    def wake(self) -> None:
        """Wake :meth:`wait` up."""
        with self._lock, contextlib.suppress(OSError):
            if self._wake_w >= 0:  # closed once the pod is done; never write to a reused fd
                os.write(self._wake_w, b"x")

    def wait(self, timeout: float | None) -> list[tuple[str, Process]]:
        """Wait for an exit, a wake-up or ``timeout`` seconds; return who exited, reaped."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for running in self.running.values():
            poller.register(running.pidfd, select.POLLIN)
        poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        exited = [(n, r) for n, r in self.running.items() if r.proc.poll() is not None]
        for name, running in exited:
            wait_gone(running.child)
            os.close(running.pidfd)
            del self.running[name]
        return exited

    def close(self) -> None:
        """Kill and reap whatever still runs, and close the pipe (the pod is done)."""
        for running in self.running.values():
            killpg(running.proc.pid)
            running.proc.wait()
            wait_gone(running.child)
            os.close(running.pidfd)
        self.running.clear()
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1


def spawn(argv: list[str], log: Path, info_fd: int) -> subprocess.Popen[bytes]:
    """Start a sandbox in its own process group, both output streams into ``log``."""
    with log.open("ab") as out:
        # kubelet merges stdout and stderr into one container log; one file keeps their order.
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(info_fd,),
            start_new_session=True,
        )


def read_child_pid(read_end: int) -> int | None:
    """Read bubblewrap's --info-fd report until it closes it; return the sandbox's PID 1."""
    info = b""
    while chunk := os.read(read_end, 4096):
        info += chunk
    try:
        return int(json.loads(info)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a sandbox's whole process group; gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


def wait_gone(pid: int | None, seconds: float = 5.0) -> None:
    """Wait until a sandbox's PID 1 is gone or a zombie."""
    # The kernel kills and reaps every other process of a PID namespace before its init
    # exits, so the init alone tells that the whole sandbox is gone.
    deadline = time.monotonic() + seconds
    while pid is not None and not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.002)


def tail(path: Path, limit: int) -> bytes:
    """Return the last ``limit`` bytes of a file, or b"" if it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
            return handle.read()
    except OSError:
        return b""


def outcome(running: Process) -> tuple[int, str | None, str]:
    """Return an exited container's exit code, reason (None: by exit code) and message."""
    code = running.exit_code()
    log = tail(running.log_file, podstatus.FALLBACK_BYTES)
    policy = str(running.container.get("terminationMessagePolicy", "File"))
    try:
        written = running.termination_file.read_bytes()
    except OSError:
        written = b""
    if code == 1 and log.startswith(b"bwrap: ") and log.count(b"\n") <= 1:
        # bubblewrap itself failed to set the sandbox up: the container never started.
        return 128, "StartError", f"local runtime: {log.decode(errors='replace').strip()}"
    return code, None, podstatus.termination_message(written, log, code, policy)


def run_probe(
    argv: list[str], timeout: float, started: Callable[[subprocess.Popen[bytes] | None], bool]
) -> tuple[bool, bytes]:
    """Run a probe's sandbox to its end or ``timeout``; ``started`` may veto or track it."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if not started(proc):
        killpg(proc.pid)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        killpg(proc.pid)
        output, _ = proc.communicate()
    finally:
        started(None)
    return proc.returncode == 0, output


def check_bwrap(bwrap: str) -> str:
    """Return bubblewrap's path once a trivial sandbox ran; raise PermanentError otherwise."""
    path = shutil.which(bwrap)
    if path is None:
        raise PermanentError(
            f"the local runtime needs bubblewrap ({bwrap!r} is not on PATH): {_INSTALL}"
        )
    if not hasattr(os, "pidfd_open"):
        raise PermanentError("the local runtime needs Linux 5.3 or later (pidfd_open)")
    argv = sandbox.bwrap_argv(
        {"name": "probe", "command": ["true"]},
        {},
        fields={},
        termination_log=None,
        bwrap=path,
        privileged=os.geteuid() == 0,
    )
    try:
        result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PermanentError(f"bubblewrap cannot create a sandbox ({exc}); {_INSTALL}") from exc
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise PermanentError(
            f"bubblewrap cannot create a sandbox here ({detail}); {_INSTALL}, and allow "
            "unprivileged user namespaces (or run kueue-tes as root)"
        )
    return path
