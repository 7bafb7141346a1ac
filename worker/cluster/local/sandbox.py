"""One container as a bubblewrap command line: the host root read-only, the pod's volumes bound.

Everything here is pure except ``RealHost``, which reads the host's directory tree; tests pass a
fake one.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from worker.cluster.local.imageroot import Command, Root

#: containerd's default PATH, for containers that set none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
#: Host top-level entries the sandbox provides itself.
SPECIAL = frozenset({"proc", "dev", "sys", "tmp"})
#: The capabilities a container runtime grants root by default (Docker's and containerd's set).
DEFAULT_CAPS = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)
_MAX_SYMLINKS = 40


class SandboxError(Exception):
    """The container cannot run as specified; the message says what to change."""


@dataclass(frozen=True)
class HostEntry:
    """One entry of a host directory."""

    name: str
    kind: Literal["dir", "file", "symlink"]
    target: str = ""


class HostView(Protocol):
    """Read access to the host's directory tree."""

    def entry(self, path: str) -> HostEntry | None:
        """Return what ``path`` is on the host (not following a final symlink), or None."""
        ...

    def listdir(self, path: str) -> list[HostEntry]:
        """Return the entries of a host directory, sorted by name."""
        ...


class RealHost:
    """The host's real file system, or the tree under ``root`` seen as one."""

    def __init__(self, root: str = "") -> None:
        self.root = root.rstrip("/")

    def entry(self, path: str) -> HostEntry | None:
        """Return what ``path`` is on the host, or None when it does not exist."""
        path = self.root + path
        try:
            if os.path.islink(path):
                return HostEntry(posixpath.basename(path), "symlink", os.readlink(path))
            if os.path.isdir(path):
                return HostEntry(posixpath.basename(path), "dir")
            if os.path.lexists(path):
                return HostEntry(posixpath.basename(path), "file")
        except OSError:
            return None
        return None

    def listdir(self, path: str) -> list[HostEntry]:
        """Return a host directory's entries; sockets, devices and pipes count as files."""
        entries: list[HostEntry] = []
        try:
            with os.scandir(self.root + path) as scan:
                for item in scan:
                    if item.is_symlink():
                        entries.append(HostEntry(item.name, "symlink", os.readlink(item.path)))
                    elif item.is_dir(follow_symlinks=False):
                        entries.append(HostEntry(item.name, "dir"))
                    else:
                        entries.append(HostEntry(item.name, "file"))
        except OSError:
            return []
        return sorted(entries, key=lambda e: e.name)


@dataclass(frozen=True)
class Mount:
    """One bind mount: ``source`` on the host at ``target`` in the sandbox."""

    source: str
    target: str
    read_only: bool
    volume_root: str


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` references as kubelet does; ``$$`` escapes, unknown names stay as-is."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def pod_fields(pod: Mapping[str, Any]) -> dict[str, str]:
    """Return the pod fields an env fieldRef may name."""
    meta, spec = pod["metadata"], pod["spec"]
    return {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", "local"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
        **{f"metadata.labels['{k}']": v for k, v in (meta.get("labels") or {}).items()},
        **{f"metadata.annotations['{k}']": v for k, v in (meta.get("annotations") or {}).items()},
    }


def container_env(
    container: Mapping[str, Any], fields: Mapping[str, str], default_path: bool = True
) -> dict[str, str]:
    """Return a container's environment; ``fields`` holds the pod fields a fieldRef may name."""
    name = container.get("name", "?")
    if container.get("envFrom"):
        raise SandboxError(
            f"container {name}: envFrom (Secrets, ConfigMaps) is not supported by the local "
            "runtime; set plain env values"
        )
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = expand(str(item.get("value", "")), env)
            continue
        path = (source.get("fieldRef") or {}).get("fieldPath")
        if path is None or path not in fields:
            raise SandboxError(
                f"container {name}: env {item['name']} uses valueFrom, which the local runtime "
                f"does not support (only fieldRef to {', '.join(sorted(fields))}); set a value"
            )
        env[item["name"]] = fields[path]
    if default_path:
        env.setdefault("PATH", DEFAULT_PATH)
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """Return the argv a container runs: command + args, with ``$(VAR)`` expanded."""
    command = container.get("command") or []
    if not command:
        raise SandboxError(
            f"container {container.get('name', '?')} has no command: the local runtime does not "
            "pull images, so it cannot know their entrypoint; set command"
        )
    return [expand(str(part), env) for part in [*command, *(container.get("args") or [])]]


def _clean_subpath(sub: str, name: str) -> str:
    parts = PurePosixPath(sub).parts
    if sub.startswith("/") or ".." in parts:
        raise SandboxError(f"container {name}: subPath {sub!r} must be relative, without '..'")
    return posixpath.normpath(sub) if sub else ""


def container_mounts(
    container: Mapping[str, Any],
    volumes_on_host: Mapping[str, str],
    env: Mapping[str, str],
    read_only_volumes: frozenset[str] = frozenset(),
) -> list[Mount]:
    """Return a container's volume mounts, parents before children as container runtimes do."""
    name = container.get("name", "?")
    mounts: list[Mount] = []
    for item in container.get("volumeMounts") or []:
        volume = item.get("name")
        if volume not in volumes_on_host:
            raise SandboxError(f"container {name}: volumeMount {volume!r} names no pod volume")
        target = posixpath.normpath(item.get("mountPath", ""))
        if not target.startswith("/") or target == "/":
            raise SandboxError(f"container {name}: mountPath {target!r} must be absolute, not /")
        sub = item.get("subPath") or ""
        if item.get("subPathExpr"):
            sub = expand(item["subPathExpr"], env)
        sub = _clean_subpath(sub, name)
        root = volumes_on_host[volume]
        source = posixpath.join(root, sub) if sub and sub != "." else root
        read_only = bool(item.get("readOnly")) or volume in read_only_volumes
        mounts.append(Mount(source, target, read_only, root))
    return sorted(mounts, key=lambda m: len(PurePosixPath(m.target).parts))


def resolve(path: str, host: HostView) -> str:
    """Resolve host symlinks along ``path``, as a runtime resolves mount targets in the image."""
    parts = [p for p in path.split("/") if p]
    out = "/"
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            out = posixpath.dirname(out)
            continue
        here = posixpath.join(out, part)
        found = host.entry(here) if not _is_special(here) else None
        if found is not None and found.kind == "symlink":
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise SandboxError(f"too many levels of symbolic links in {path}")
            if found.target.startswith("/"):
                out = "/"
            parts = [p for p in found.target.split("/") if p] + parts
            continue
        out = here
    return out


def _is_special(path: str) -> bool:
    return PurePosixPath(path).parts[1:2] in {(name,) for name in SPECIAL}


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _rebuild(
    directory: str, targets: Sequence[str], host: HostView, args: list[str], prefix: str = ""
) -> list[str]:
    """Recreate a directory's entries (from ``prefix`` on the host); return those made tmpfs."""
    replaced: list[str] = []
    for item in host.listdir(directory):
        path = posixpath.join(directory, item.name)
        if (directory == "/" and item.name in SPECIAL) or path in targets:
            continue
        inner = [t for t in targets if t.startswith(path + "/")]
        if inner and item.kind == "dir":
            # A read-only bind cannot receive a new mount point; a tmpfs holding the same
            # entries can, so the mount appears exactly where the pod asked.
            args += ["--tmpfs", path]
            replaced += [path, *_rebuild(path, inner, host, args, prefix)]
        elif inner:
            raise SandboxError(f"cannot mount at {inner[0]}: {path} is a file on the host")
        elif item.kind == "symlink":
            args += ["--symlink", item.target, path]
        else:
            args += ["--ro-bind", prefix + path, path]
    return replaced


def bwrap_argv(
    container: Mapping[str, Any],
    volumes_on_host: Mapping[str, str],
    *,
    fields: Mapping[str, str],
    termination_log: str | None,
    bwrap: str = "bwrap",
    host: HostView | None = None,
    info_fd: int | None = None,
    privileged: bool = False,
    read_only_volumes: frozenset[str] = frozenset(),
    keep: tuple[str, ...] = (),
    image: tuple[Root, Command] | None = None,
) -> list[str]:
    """Return the bwrap command line that runs ``container`` like a container runtime would.

    Without ``image`` the container runs on the host's root file system, read-only; with one,
    on that root (an image's), running what the image made of the container's command.
    """
    root, command = image or (None, None)
    host = host or RealHost(root.path if root is not None else "")
    env = command.env if command else container_env(container, fields)
    argv = command.argv if command else container_argv(container, env)
    mounts = [
        Mount(m.source, resolve(m.target, host), m.read_only, m.volume_root)
        for m in container_mounts(container, volumes_on_host, env, read_only_volumes)
    ]
    for mount in mounts:
        if PurePosixPath(mount.target).parts[1:2] in {("proc",), ("sys",)}:
            raise SandboxError(f"cannot mount a volume at {mount.target}")
    term_path = resolve(container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH, host)
    workdir = resolve(command.workdir if command else container.get("workingDir") or "/", host)
    in_volume = any(_within(workdir, m.target) for m in mounts)
    files = [(p, resolve(p, host)) for p in (root.host_files if root else ()) if os.path.isfile(p)]
    targets = [m.target for m in mounts] + [target for _, target in files]
    if termination_log is not None and not _is_special(term_path):
        targets.append(term_path)
    create_workdir = not in_volume and workdir != "/" and host.entry(workdir) is None
    if create_workdir and not _is_special(workdir):
        targets.append(workdir)

    if root is not None and root.writable:
        # The container's own layer: bubblewrap makes the mount points in it, as runc does.
        args, replaced = [bwrap, "--bind", root.path, "/"], []
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm"]
    else:
        args = [bwrap, "--tmpfs", "/"]
        replaced = _rebuild("/", targets, host, args, root.path if root else "")
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]
    args += ["--ro-bind", "/sys", "/sys"]
    if create_workdir:
        args += ["--dir", workdir]
    for mount in mounts:
        # Bind read-write first so that nested mount points can still be created inside.
        args += ["--bind", mount.source, mount.target]
    for path, target in files:
        args += ["--ro-bind", path, target]
    for path in keep if root is None else ():
        # Host paths a fresh /tmp (or a volume there) would hide, such as our virtualenv.
        args += ["--ro-bind", path, path]
    if termination_log is not None:
        args += ["--bind", termination_log, term_path]
    if in_volume:
        args += ["--dir", workdir]
    for mount in reversed(mounts):
        if mount.read_only:
            args += ["--remount-ro", mount.target]
    if root is None or not root.writable or root.read_only:
        for path in [*reversed(replaced), "/"]:
            args += ["--remount-ro", path]
    args += ["--unshare-pid", "--unshare-ipc", "--die-with-parent", "--as-pid-1"]
    if privileged:
        # Root in the sandbox must not remount the host's file systems read-write.
        args += ["--cap-drop", "ALL"]
        for cap in DEFAULT_CAPS:
            args += ["--cap-add", cap]
    args += ["--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--chdir", workdir]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    return [*args, "--", *argv]


def host_path(path: str, mounts: Sequence[Mount], root: str = "") -> str | None:
    """Return where a sandbox path lives on the host, or None where the sandbox has its own.

    ``root``: the container's root directory on the host (an image's), "" for the host's own.
    """
    if root:
        path = resolve(path, RealHost(root))
    for mount in sorted(mounts, key=lambda m: -len(m.target)):
        if _within(path, mount.target):
            return mount.source + path[len(mount.target) :]
    if root:
        return (
            None
            if PurePosixPath(path).parts[1:2] in {("proc",), ("dev",), ("sys",)}
            else root.rstrip("/") + path
        )
    return None if _is_special(path) else path


def executable_candidates(argv0: str, env: Mapping[str, str]) -> list[str]:
    """Return the sandbox paths execvp would try for ``argv0``."""
    if "/" in argv0:
        return [argv0]
    return [posixpath.join(d or ".", argv0) for d in env.get("PATH", DEFAULT_PATH).split(":")]
