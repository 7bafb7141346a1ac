"""A container on its image: Kubernetes' rules for command, environment and working directory.

kubelet combines a container's spec with its image's config: ``command`` replaces the image's
``Entrypoint`` (and then its ``Cmd`` is ignored), ``args`` replace ``Cmd``; the image's ``Env`` is
the base that the container's ``env`` overrides, name by name; the image's ``WorkingDir`` applies
where the container sets no ``workingDir``. ``$(VAR)`` references are expanded in the container's
own ``command``, ``args`` and ``env`` only, with the container's variables, never in what the
image says (pure).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.cluster.local import sandbox
from worker.cluster.local.sandbox import SandboxError

#: Files a container runtime provides in every container, bound read-only from the host (the
#: sandbox shares the host's network, so its name resolution is the host's).
HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")


@dataclass(frozen=True)
class Root:
    """A container's root other than the host's: a directory on the host, and how to use it."""

    path: str
    writable: bool  # bound read-write: a layer of the container's own, mount points made in it
    read_only: bool = False  # remounted read-only once the mounts are in place
    host_files: tuple[str, ...] = ()  # host files bound read-only at the same path


@dataclass(frozen=True)
class Command:
    """What a container runs, where, and with which environment, once an image has had its say."""

    argv: list[str]
    env: dict[str, str]
    workdir: str


@dataclass(frozen=True)
class ImageRoot:
    """Where a container's root is on the host, and what its image's config says."""

    path: str
    writable: bool  # an overlay of the container's own: mount points are made in it
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""


def environment(
    container: Mapping[str, Any], fields: Mapping[str, str], image: ImageRoot
) -> dict[str, str]:
    """Return the environment: the image's ``Env``, overridden by the container's ``env``."""
    out: dict[str, str] = {}
    for item in image.env:
        key, equals, value = item.partition("=")
        if key and equals:
            out[key] = value
    out.update(sandbox.container_env(container, fields, default_path=False))
    out.setdefault("PATH", sandbox.DEFAULT_PATH)
    return out


def argv(container: Mapping[str, Any], fields: Mapping[str, str], image: ImageRoot) -> list[str]:
    """Return what the container runs, by Kubernetes' rule for command/args and Entrypoint/Cmd."""
    own = sandbox.container_env(container, fields, default_path=False)
    command = [sandbox.expand(str(p), own) for p in container.get("command") or []]
    args = [sandbox.expand(str(p), own) for p in container.get("args") or []]
    if command:
        out = command + args
    else:
        out = list(image.entrypoint or ()) + (args or list(image.cmd or ()))
    if not out:
        raise SandboxError(
            f"container {container.get('name', '?')}: no command specified: the image has no "
            "Entrypoint or Cmd; set command"
        )
    return out


def working_dir(container: Mapping[str, Any], image: ImageRoot) -> str:
    """Return the container's working directory: its own, else the image's, else /."""
    return str(container.get("workingDir") or image.working_dir or "/")


def read_only(container: Mapping[str, Any]) -> bool:
    """Tell whether the container's securityContext makes its root file system read-only."""
    return bool((container.get("securityContext") or {}).get("readOnlyRootFilesystem"))
