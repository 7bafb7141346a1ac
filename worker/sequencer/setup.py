"""The `setup` init container: prepare the control volume before anything else of the pod runs.

Usage: ``python -m worker.sequencer.setup /tes [--busybox PATH] [--executors N] [--gates]
[--plan PLAN.json --work WORK]``. It copies a static busybox and the runner into ``/tes/bin``
and creates the FIFOs through which the sequencer, the runners and `finish` wake each other.
In the ready layout (``--plan``) it also creates every mount point of the executors in the work
volume before their containers start (docs/task-pod.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from worker.sequencer.runners import FINISH_WAKE

RUNNER = Path(__file__).with_name("runner.sh")


def _fifo(path: Path) -> None:
    if not path.exists():
        os.mkfifo(path)
    path.chmod(0o666)  # executors may run as any user


def prepare(control: Path, executors: int, gates: bool) -> None:
    """Create exec/<i>/ with its life FIFO for each executor; wake FIFOs where ``gates``."""
    for index in range(executors):
        folder = control / "exec" / str(index)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        folder.parent.chmod(0o777)
        _fifo(folder / "life")
        if gates:
            _fifo(folder / "wake")
    _fifo(control / FINISH_WAKE)


def pin(plan_file: Path, work: Path) -> None:
    """Create each mount of plan.json under ``work``/fs; hard-link file mounts as pins/<n>.

    Kubelet binds an executor's subPath when its container starts, which in the ready layout is
    before stage-in: a missing path would become a directory, and a file is bound by its inode.
    The pin keeps that inode findable, so the sequencer can put the staged content into it.
    """
    plan = json.loads(plan_file.read_text())
    for number, mount in enumerate(plan.get("mounts") or ()):
        local = work / "fs" / str(mount["path"]).lstrip("/")
        if mount["kind"] == "dir":
            local.mkdir(parents=True, exist_ok=True)
            local.chmod(0o777)  # executors may run as any user
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        local.touch(exist_ok=True)
        local.chmod(0o666)
        pinned = work / "pins" / str(number)
        pinned.parent.mkdir(exist_ok=True)
        if not pinned.exists():
            os.link(local, pinned)


def install(control: Path, busybox: Path, executors: int = 0, gates: bool = False) -> None:
    """Copy busybox and runner.sh into ``control``/bin, executable, and prepare the FIFOs."""
    if not busybox.is_file():
        raise FileNotFoundError(
            f"no busybox at {busybox}; install a static busybox in the image (busybox-static)"
        )
    target = control / "bin"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, target / "busybox")
    shutil.copyfile(RUNNER, target / "runner.sh")
    (target / "busybox").chmod(0o755)
    (target / "runner.sh").chmod(0o755)
    prepare(control, executors, gates)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the setup container."""
    parser = argparse.ArgumentParser(prog="python -m worker.sequencer.setup")
    parser.add_argument("control", type=Path)
    parser.add_argument("--busybox", type=Path, default=None)
    parser.add_argument("--executors", type=int, default=0, help="executors of the task")
    parser.add_argument("--gates", action="store_true", help="the ready layout: turns to wait")
    parser.add_argument("--plan", type=Path, default=None, help="plan.json: mounts to create")
    parser.add_argument("--work", type=Path, default=None, help="the work volume")
    args = parser.parse_args(argv)
    found = args.busybox or Path(shutil.which("busybox") or "/bin/busybox")
    try:
        install(args.control, found, args.executors, args.gates)
        if args.plan is not None and args.work is not None:
            pin(args.plan, args.work)
    except (OSError, ValueError) as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
