"""Image layers applied onto a root file system, as a container runtime unpacks them.

Each layer is a tar stream applied in order onto one directory: ``.wh.NAME`` deletes NAME of
the layers below, ``.wh..wh..opq`` empties its directory of what the layers below put there,
symbolic and hard links are kept as links, and nothing is ever written outside the root: entry
names with ``..`` are refused, and the directories an entry goes into are resolved inside the
root, following the image's own symbolic links as the container will see them. Device nodes
are skipped (the sandbox mounts the root with ``nodev`` anyway); extended attributes are not
kept.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
from typing import IO

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_MAX_SYMLINKS = 40
_COPY_CHUNK = 1024 * 1024


class LayerError(Exception):
    """A layer cannot be applied; the message says which entry and why."""


class Tree:
    """One root directory being built from layers."""

    def __init__(self, root: str) -> None:
        """Build into ``root``, an existing empty directory."""
        self.root = root
        self.size = 0  # bytes of regular files written, plus a header's worth per entry
        self._owner = os.geteuid() == 0
        self._dirs: dict[str, str] = {"": root}
        self._modes: dict[str, tuple[int, float]] = {}

    def apply(self, stream: IO[bytes]) -> None:
        """Apply one uncompressed layer, read as a tar stream from ``stream``."""
        written: set[str] = set()
        try:
            with tarfile.open(fileobj=stream, mode="r|", bufsize=_COPY_CHUNK) as tar:
                for member in tar:
                    self._member(tar, member, written)
        except tarfile.TarError as exc:
            raise LayerError(f"the layer is not a valid tar archive: {exc}") from exc

    def finish(self) -> None:
        """Give directories their modes and times, deepest first (children changed them)."""
        for path in sorted(self._modes, key=len, reverse=True):
            mode, mtime = self._modes[path]
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))

    # -- one entry --------------------------------------------------------------------------

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, written: set[str]) -> None:
        rel = _relative(member.name)
        if not rel:
            return  # the layer's own "./": the root keeps its mode
        parent_rel, base = posixpath.split(rel)
        parent = self._inside(parent_rel)
        if base == OPAQUE:
            with os.scandir(parent) as entries:
                for entry in entries:
                    if entry.path not in written:
                        self._remove(entry.path)
            return
        if base.startswith(WHITEOUT):
            self._remove(os.path.join(parent, base[len(WHITEOUT) :]))
            return
        path = os.path.join(parent, base)
        written.add(path)
        self.size += 512
        existing = _lstat(path)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                if existing is not None:
                    self._remove(path)
                os.mkdir(path, 0o755)
            self._own(path, member)
            self._modes[path] = (member.mode & 0o7777, member.mtime)
            os.chmod(path, 0o755 if self._owner else 0o700 | member.mode & 0o777)
            return
        if existing is not None:
            self._remove(path)
        if member.isreg():
            source = tar.extractfile(member)
            assert source is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, _COPY_CHUNK)
            self.size += member.size
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            target = self._link_target(member)
            os.link(target, path, follow_symlinks=False)
            return  # a hard link shares its target's inode: mode and owner are the target's
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            return  # character and block devices: not in a sandbox's root
        self._own(path, member)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def _own(self, path: str, member: tarfile.TarInfo) -> None:
        if self._owner:
            os.lchown(path, member.uid, member.gid)

    def _link_target(self, member: tarfile.TarInfo) -> str:
        rel = _relative(member.linkname)
        if not rel:
            raise LayerError(f"hard link {member.name!r} points at the root")
        parent_rel, base = posixpath.split(rel)
        missing = LayerError(f"hard link {member.name!r} points at {member.linkname!r}, missing")
        try:
            target = os.path.join(self._inside(parent_rel, create=False), base)
        except LayerError as exc:
            raise missing from exc
        if _lstat(target) is None:
            raise missing
        return target

    def _remove(self, path: str) -> None:
        found = _lstat(path)
        if found is None:
            return
        if stat.S_ISDIR(found.st_mode):
            shutil.rmtree(path)
            self._modes = {p: m for p, m in self._modes.items() if not _within(p, path)}
            self._dirs = {"": self.root}  # a resolved path may have gone through it
        else:
            os.unlink(path)
            if stat.S_ISLNK(found.st_mode):
                self._dirs = {"": self.root}

    def _inside(self, rel: str, create: bool = True) -> str:
        """Return the host path of directory ``rel``, its symlinks resolved inside the root."""
        cached = self._dirs.get(rel)
        if cached is not None:
            return cached
        queue = [p for p in rel.split("/") if p]
        current = ""
        hops = 0
        while queue:
            part = queue.pop(0)
            if part == ".":
                continue
            if part == "..":
                current = posixpath.dirname(current)  # ".." at the root stays at the root
                continue
            candidate = posixpath.join(current, part) if current else part
            host = os.path.join(self.root, candidate)
            found = _lstat(host)
            if found is None:
                if not create:
                    raise LayerError(f"{rel}: {candidate} does not exist")
                os.mkdir(host, 0o755)
            elif stat.S_ISLNK(found.st_mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise LayerError(f"{rel}: too many levels of symbolic links")
                target = os.readlink(host)
                if target.startswith("/"):
                    current = ""
                queue[:0] = [p for p in target.split("/") if p]
                continue
            elif not stat.S_ISDIR(found.st_mode):
                raise LayerError(f"{rel}: {candidate} is not a directory")
            current = candidate
        path = os.path.join(self.root, current) if current else self.root
        self._dirs[rel] = path
        return path


def _relative(name: str) -> str:
    """Return an entry's path relative to the root; refuse one that would leave it."""
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise LayerError(f"entry {name!r} leaves the root (it holds '..')")
    return "/".join(parts)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")
