"""A pod's volumes on the host, and the per-container checks kubelet makes before a start."""

from __future__ import annotations

import base64
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.cluster.local import sandbox
from worker.cluster.local.sandbox import SandboxError

if TYPE_CHECKING:
    from worker.cluster.local.imageroot import Command, Root

_SUPPORTED = "emptyDir, ephemeral, configMap and hostPath"


def _configmap_files(volume: Mapping[str, Any], configmap: Mapping[str, Any]) -> dict[str, bytes]:
    data: dict[str, bytes] = {k: str(v).encode() for k, v in (configmap.get("data") or {}).items()}
    for key, value in (configmap.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    items = volume.get("items")
    if not items:
        return data
    files: dict[str, bytes] = {}
    for item in items:
        if item["key"] not in data:
            raise SandboxError(f"configMap volume {volume.get('name')}: no key {item['key']!r}")
        files[item["path"]] = data[item["key"]]
    return files


def _write_configmap(
    target: Path, volume: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, Any]]
) -> None:
    source = volume["configMap"]
    configmap = configmaps.get(source.get("name", ""))
    if configmap is None:
        if source.get("optional"):
            return
        raise SandboxError(f"volume {volume['name']}: configmap {source.get('name')!r} not found")
    mode = int(source.get("defaultMode", 0o644))
    for rel, content in _configmap_files(source, configmap).items():
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise SandboxError(f"volume {volume['name']}: item path {rel!r} must be relative")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)


def prepare(
    pod_spec: Mapping[str, Any], root: Path, configmaps: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, str], frozenset[str]]:
    """Create the pod's volumes under ``root``; return their host paths and the read-only ones."""
    paths: dict[str, str] = {}
    read_only: set[str] = set()
    for volume in pod_spec.get("volumes") or []:
        name = volume["name"]
        target = root / name
        if "emptyDir" in volume or "ephemeral" in volume:
            # An ephemeral volume is the operator's storage class on Kubernetes; here a directory.
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)  # kubelet creates emptyDirs world-writable
        elif "configMap" in volume:
            target.mkdir(parents=True, exist_ok=True)
            _write_configmap(target, volume, configmaps)
            read_only.add(name)  # kubelet always mounts configMap volumes read-only
        elif "hostPath" in volume:
            host = volume["hostPath"]
            target = Path(host["path"])
            if host.get("type") == "DirectoryOrCreate":
                target.mkdir(parents=True, exist_ok=True)
            elif not target.exists():
                raise SandboxError(f"volume {name}: hostPath {target} does not exist")
        else:
            raise SandboxError(
                f"volume {name}: the local runtime supports only {_SUPPORTED} volumes"
            )
        paths[name] = str(target)
    return paths, frozenset(read_only)


def _prepare_subpath(mount: sandbox.Mount, container: str) -> None:
    if mount.source == mount.volume_root:
        return
    root = os.path.realpath(mount.volume_root)
    real = os.path.realpath(mount.source)
    if not (real == root or real.startswith(root + "/")):
        raise SandboxError(
            f"container {container}: subPath of {mount.target} leaves its volume (a symlink)"
        )
    if not os.path.lexists(mount.source):
        # kubelet creates a missing subPath as a directory.
        os.makedirs(mount.source, mode=0o777, exist_ok=True)


def _check_executable(
    argv0: str, env: Mapping[str, str], mounts: list[sandbox.Mount], root: str
) -> None:
    for candidate in sandbox.executable_candidates(argv0, env):
        on_host = sandbox.host_path(candidate, mounts, root)
        if on_host is None or not posixpath.isabs(candidate):
            return  # the sandbox makes this path itself; let bubblewrap try
        if os.path.isfile(on_host) and os.access(on_host, os.X_OK):
            return
    if "/" in argv0:
        detail = f"stat {argv0}: no such file or directory"
    else:
        detail = "executable file not found in $PATH"
    raise SandboxError(f'failed to start container process: exec: "{argv0}": {detail}')


def check_container(
    container: Mapping[str, Any],
    volumes: Mapping[str, str],
    fields: Mapping[str, str],
    read_only: frozenset[str],
    image: tuple[Root, Command] | None = None,
) -> None:
    """Create the container's subPaths and make sure its command exists, as kubelet would.

    ``image``: the container's root and what its image made of its command, if it has one.
    """
    if image is None:
        env = sandbox.container_env(container, fields)
        argv, root = sandbox.container_argv(container, env), ""
    else:
        env, argv, root = image[1].env, image[1].argv, image[0].path
    mounts = sandbox.container_mounts(container, volumes, env, read_only)
    for mount in mounts:
        _prepare_subpath(mount, str(container.get("name")))
    _check_executable(argv[0], env, mounts, root)
