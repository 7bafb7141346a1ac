"""From registry to root file system in one pass: download, verify, keep, decompress, apply.

A layer that is not cached yet streams from the registry once: its bytes are hashed (the blob
digest), written to the blob cache, decompressed, hashed again (the config's ``diff_id``) and
applied by :mod:`rootfs` as they arrive. A cached layer streams from its file. Nothing counts
until every digest matched: the caller moves the finished root into place only then, and a
blob file is renamed into the cache only once its digest is checked.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from urllib3.exceptions import HTTPError as Urllib3Error

from worker.cluster.local import rootfs, streams
from worker.cluster.local.reference import Reference
from worker.cluster.local.registry import PullError, Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layer:
    """One layer to apply: its blob, its size, and the diff_id of its uncompressed tar."""

    digest: str
    size: int
    diff_id: str


def blob_path(blobs: Path, digest: str) -> Path:
    """Return where a blob lives in the cache."""
    algorithm, _, hexdigest = digest.partition(":")
    return blobs / algorithm / hexdigest


def apply_layers(
    registry: Registry,
    ref: Reference,
    layers: Sequence[Layer],
    tree: rootfs.Tree,
    blobs: Path,
) -> list[str]:
    """Apply ``layers`` in order onto ``tree``; return the digests of blobs newly downloaded."""
    fetched: list[str] = []
    for layer in layers:
        what = f"layer {layer.digest} of {ref.canonical}"
        try:
            if _apply(registry, ref, layer, tree, blobs, what):
                fetched.append(layer.digest)
        except rootfs.LayerError as exc:
            raise PullError(f"{what}: {exc}") from exc
        except (EOFError, zlib.error) as exc:
            raise PullError(f"{what} is not a valid compressed tar: {exc}") from exc
        except Urllib3Error as exc:
            raise PullError(f"downloading {what} failed: {exc}") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PullError(
                    f"no space left on the device of the image cache while unpacking {what}; "
                    "free disk space or lower KUEUE_TES_IMAGE_CACHE_BYTES"
                ) from exc
            raise PullError(f"unpacking {what} failed: {exc}") from exc
    return fetched


def _apply(
    registry: Registry, ref: Reference, layer: Layer, tree: rootfs.Tree, blobs: Path, what: str
) -> bool:
    """Apply one layer; return True when its blob was downloaded (not read from the cache)."""
    cached = blob_path(blobs, layer.digest)
    if cached.is_file():
        with cached.open("rb") as handle:
            _unpack(streams.Hashing(handle, hashed=False), layer, tree, what, check_blob=False)
        os.utime(cached)
        return False
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.{uuid.uuid4().hex[:8]}")
    response = registry.blob(ref, layer.digest)
    try:
        with partial.open("wb") as sink:
            _unpack(streams.Hashing(response, sink), layer, tree, what, check_blob=True)
        partial.rename(cached)
    finally:
        response.release_conn()
        partial.unlink(missing_ok=True)
    return True


def _unpack(
    raw: streams.Hashing, layer: Layer, tree: rootfs.Tree, what: str, check_blob: bool
) -> None:
    ahead = streams.Prefetched(raw)
    try:
        plain = streams.Hashing(streams.decompressed(ahead))
        tree.apply(cast(IO[bytes], plain))
        plain.drain()
        ahead.drain()
    except streams.UnsupportedCompression as exc:
        raise PullError(f"{what}: {exc}") from exc
    finally:
        ahead.close()
    if check_blob and raw.digest != layer.digest:
        raise PullError(f"{what}: the registry sent bytes with digest {raw.digest}")
    if check_blob and layer.size and raw.size != layer.size:
        raise PullError(f"{what}: the registry sent {raw.size} bytes, not {layer.size}")
    if plain.digest != layer.diff_id:
        raise PullError(
            f"{what}: its uncompressed digest {plain.digest} is not the image config's "
            f"diff_id {layer.diff_id}"
        )


def chain_id(diff_ids: Sequence[str]) -> str:
    """Return the OCI ChainID of a stack of layers: one name for one root file system."""
    chain = ""
    for diff_id in diff_ids:
        chain = (
            diff_id
            if not chain
            else "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        )
    return chain or "sha256:" + hashlib.sha256(b"").hexdigest()
