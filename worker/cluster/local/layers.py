"""Containers' writable layers: an overlay over the image's cached root, discarded with the pod.

Each container start gets a kernel overlayfs mount whose lower directory is the image's
unpacked root (shared, never written) and whose upper directory is the container's own, under
the pod's directory. The mount is made in the server's mount namespace with mount(2) (no
helper process on the way of a container's start) and detached when the pod ends; a server
that died leaves its mounts behind, and the next one detaches them (:func:`detach_under`).
Mounting an overlay needs root; where it cannot be mounted, containers get their image's root
read-only (:func:`probe` tells which, and why).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _escape(path: str) -> str:
    # overlayfs splits its options at commas and its lower directories at colons.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def mount_overlay(lower: str, upper: str, work: str, target: str, volatile: bool) -> None:
    """Mount an overlay of ``upper`` over ``lower`` at ``target``; raise OSError."""
    options = f"lowerdir={_escape(lower)},upperdir={_escape(upper)},workdir={_escape(work)}"
    if volatile:
        options += ",volatile"  # no sync when the layer goes: it is thrown away anyway
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, options.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount overlay at {target}: {os.strerror(code)}")


def unmount(target: str) -> None:
    """Detach a mount; one that is already gone is fine."""
    _libc.umount2(target.encode(), MNT_DETACH)


def _mount_points() -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            # The kernel writes spaces, tabs, newlines and backslashes as octal escapes.
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def detach_under(root: Path) -> int:
    """Detach every mount below ``root`` (a previous server's layers); return how many."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = sorted((p for p in _mount_points() if p.startswith(prefix)), key=len, reverse=True)
    for point in found:
        unmount(point)
    return len(found)


def probe(scratch: Path) -> tuple[bool, bool, str]:
    """Return whether overlays mount here, with ``volatile``, and if not, why not."""
    if os.geteuid() != 0:
        return False, False, "the server does not run as root, which mounting an overlay needs"
    base = scratch / f"probe-{uuid.uuid4().hex[:8]}"
    dirs = [base / name for name in ("lower", "upper", "work", "merged")]
    why = ""
    try:
        for path in dirs:
            path.mkdir(parents=True)
        for volatile in (True, False):
            try:
                lower, upper, work, merged = (str(p) for p in dirs)
                mount_overlay(lower, upper, work, merged, volatile=volatile)
            except OSError as exc:
                why = exc.strerror or str(exc)
                continue
            unmount(str(dirs[3]))
            return True, volatile, ""
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return False, False, f"the kernel refuses an overlay mount under {scratch} ({why})"


class Layers:
    """The writable layers of one pod's containers, under the pod's directory."""

    def __init__(self, base: Path, volatile: bool) -> None:
        """Keep the layers under ``base``; ``volatile`` as :func:`probe` found it."""
        self._base, self._volatile = base, volatile
        self._mounted: list[str] = []

    def add(self, container: str, lower: str) -> str:
        """Mount a fresh layer for one start of ``container``; return its root on the host."""
        layer = self._base / f"{container}-{len(self._mounted)}"
        upper, work, merged = layer / "upper", layer / "work", layer / "root"
        for path in (upper, work, merged):
            path.mkdir(parents=True, exist_ok=True)
        mount_overlay(lower, str(upper), str(work), str(merged), self._volatile)
        self._mounted.append(str(merged))
        return str(merged)

    def release(self) -> None:
        """Detach every layer (their files go with the pod's directory)."""
        while self._mounted:
            with contextlib.suppress(OSError):
                unmount(self._mounted.pop())
