"""The `setup` init container: put the runner and a static busybox into the control volume.

Usage: ``python -m worker.sequencer.setup /tes [--busybox PATH]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

RUNNER = Path(__file__).with_name("runner.sh")


def install(control: Path, busybox: Path) -> None:
    """Copy busybox and runner.sh into ``control``/bin, executable."""
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the setup container."""
    parser = argparse.ArgumentParser(prog="python -m worker.sequencer.setup")
    parser.add_argument("control", type=Path)
    parser.add_argument("--busybox", type=Path, default=None)
    args = parser.parse_args(argv)
    found = args.busybox or Path(shutil.which("busybox") or "/bin/busybox")
    try:
        install(args.control, found)
    except OSError as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
