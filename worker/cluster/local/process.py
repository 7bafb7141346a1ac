"""Sandboxed processes: starting, signalling and reaping bubblewrap, and checking it works."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
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
