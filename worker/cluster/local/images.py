"""The local runtime's image cache: pulled once, unpacked once, shared by tasks, bounded in size.

Under ``<data_dir>/images``::

    index.json           what is cached: tags → digests, images → config and layers, sizes, last use
    blobs/sha256/<hex>   compressed layers, as the registry sent them
    roots/<hex>/         unpacked root file systems, one per stack of layers (its OCI ChainID)
    tmp/                 roots being unpacked or deleted

Concurrent pulls of one reference, and concurrent unpacks of one root, happen once: later
callers wait for the first. Roots that a container uses are held and never evicted; beyond
``max_bytes`` the least recently used blobs and roots go.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from worker.cluster.local import persist, reference, registry, rootfs, unpacker
from worker.cluster.local.reference import InvalidReference, Platform, Reference
from worker.cluster.local.registry import PullError, Registry

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: kubelet's waiting reasons for images.
ERR_IMAGE_PULL, INVALID_NAME, NEVER_PULL = "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"
_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


class ImageError(Exception):
    """An image cannot be had; ``reason`` is kubelet's waiting reason for it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Image:
    """An image ready to run: its unpacked root and what its config says. Held until released."""

    reference: str  # docker.io/library/alpine:3.20
    image_id: str  # docker.io/library/alpine@sha256:... (what the reference resolved to)
    chain: str
    root: str
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""


class _Flights:
    """Runs one call per key at a time; callers that come meanwhile get its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Future[Any]] = {}

    def run(self, key: str, call: Callable[[], T]) -> T:
        with self._lock:
            future = self._running.get(key)
            owner = future is None
            if future is None:
                future = self._running[key] = Future()
        if not owner:
            result: T = future.result()
            return result
        try:
            value = call()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(value)
            return value
        finally:
            with self._lock:
                del self._running[key]


class ImageStore:
    """Pulls and caches images for the local runtime's containers."""

    def __init__(
        self, root: Path, registry: Registry, max_bytes: int, platform: Platform | None = None
    ) -> None:
        """Keep images under ``root``, at most about ``max_bytes`` of them when none is held."""
        self._dir = Path(root)
        self._registry = registry
        self._max = max_bytes
        self.platform = platform or reference.host_platform()
        self._lock = threading.Lock()
        self._flights = _Flights()
        self._held: collections.Counter[str] = collections.Counter()
        self._index: dict[str, dict[str, Any]] = {
            "refs": {},
            "images": {},
            "roots": {},
            "blobs": {},
        }
        self.downloads = 0  # layer blobs fetched from registries, for tests and logs
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lockfile = persist.lock(self._dir, "uses the image cache")
        self._load()

    # -- what pods call ---------------------------------------------------------------------

    def cached(self, image: str, policy: str) -> Image | None:
        """Return the image, held, when the policy lets the cache answer alone; else None."""
        if policy == reference.ALWAYS:
            return None
        try:
            ref = reference.parse(image)
        except InvalidReference:
            return None
        with self._lock:
            known = self._index["refs"].get(ref.canonical)
            return None if known is None else self._hold(ref, known)

    def pull(self, image: str, policy: str) -> Image:
        """Return the image, held, pulling what is missing; raise ImageError with the reason."""
        try:
            ref = reference.parse(image)
        except InvalidReference as exc:
            raise ImageError(
                INVALID_NAME, f'Failed to apply default image tag "{image}": {exc}'
            ) from exc
        if policy != reference.ALWAYS and (found := self.cached(image, policy)) is not None:
            return found
        if policy == reference.NEVER:
            message = f'Container image "{image}" is not present with pull policy of Never'
            raise ImageError(NEVER_PULL, message)
        for _ in range(3):  # a root evicted between the pull and the hold is pulled again
            try:
                self._flights.run(ref.canonical, lambda: self._fetch(ref, policy))
            except PullError as exc:
                # The registry's words name the image already: once is enough.
                why = str(exc).removeprefix(f"{ref.canonical}: ").removeprefix(f"{ref.name}: ")
                message = f'failed to pull image "{ref.canonical}": {why}'
                raise ImageError(ERR_IMAGE_PULL, message) from exc
            with self._lock:
                known = self._index["refs"].get(ref.canonical)
                held = None if known is None else self._hold(ref, known)
            if held is not None:
                self._evict()  # only now: what was just unpacked is held, so it stays
                return held
        raise ImageError(
            ERR_IMAGE_PULL, f"{ref.canonical}: evicted from the cache as it was pulled"
        )

    def release(self, image: Image) -> None:
        """Let the cache evict an image's root again (once no other container holds it)."""
        with self._lock:
            self._held[image.chain] -= 1
            if self._held[image.chain] <= 0:
                del self._held[image.chain]
        self._evict()

    def usage(self) -> int:
        """Return the bytes the cache holds (blobs and unpacked roots, approximately)."""
        with self._lock:
            return self._usage()

    # -- pulling ----------------------------------------------------------------------------

    def _fetch(self, ref: Reference, policy: str) -> None:
        with self._lock:
            known = self._index["refs"].get(ref.canonical)
            present = known is not None and self._root_of(known["manifest"]) is not None
        # kubelet asks the registry each time; a HEAD tells whether the tag moved.
        if (
            policy == reference.ALWAYS
            and present
            and known is not None
            and (self._registry.head(ref) == known["digest"])
        ):
            return
        resolved = self._registry.resolve(ref, self.platform)
        with self._lock:
            entry = self._index["images"].get(resolved.manifest_digest)
        if entry is None:
            entry = self._describe(ref, resolved.config_digest, resolved.layers)
        chain = str(entry["chain"])
        with self._lock:
            unpacked = chain in self._index["roots"]
        if not unpacked:
            self._flights.run(f"root:{chain}", lambda: self._unpack(ref, entry))
        with self._lock:
            self._index["images"][resolved.manifest_digest] = entry
            self._index["refs"][ref.canonical] = {
                "digest": resolved.digest,
                "manifest": resolved.manifest_digest,
            }
            self._save()
        logger.info("image %s is %s", ref.canonical, ref.pinned(resolved.digest))

    def _describe(
        self, ref: Reference, config_digest: str, layers: tuple[dict[str, Any], ...]
    ) -> dict[str, Any]:
        data, _ = self._registry.document(ref, f"blobs/{config_digest}", config_digest)
        config = registry.image_config(ref, data, self.platform, len(layers))
        diff_ids = config.pop("diff_ids")
        out = []
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            if layer.get("mediaType") == _FOREIGN or layer.get("urls"):
                raise PullError(f"{ref.canonical}: foreign layers (Windows images) cannot run here")
            out.append(
                {
                    "digest": str(layer["digest"]),
                    "size": int(layer.get("size") or 0),
                    "diff_id": diff_id,
                }
            )
        return {"config": config, "layers": out, "chain": unpacker.chain_id(diff_ids)}

    def _unpack(self, ref: Reference, entry: dict[str, Any]) -> None:
        chain = str(entry["chain"])
        with self._lock:
            if chain in self._index["roots"]:
                return
        layers = [unpacker.Layer(x["digest"], x["size"], x["diff_id"]) for x in entry["layers"]]
        work = self._dir / "tmp" / uuid.uuid4().hex
        work.mkdir(parents=True)
        tree = rootfs.Tree(str(work))
        started = time.monotonic()
        try:
            fetched = unpacker.apply_layers(self._registry, ref, layers, tree, self._dir / "blobs")
            tree.finish()
            work.rename(self._root_dir(chain))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        now = time.time()
        with self._lock:
            self.downloads += len(fetched)
            self._index["roots"][chain] = {"size": tree.size, "used": now}
            for layer in layers:
                if layer.digest in fetched or layer.digest in self._index["blobs"]:
                    self._index["blobs"][layer.digest] = {"size": layer.size, "used": now}
            self._save()
        logger.info(
            "image %s: %d layers unpacked (%d downloaded) in %.1f s, %d bytes",
            ref.canonical, len(layers), len(fetched), time.monotonic() - started, tree.size,
        )  # fmt: skip

    # -- the index --------------------------------------------------------------------------

    def _root_dir(self, chain: str) -> Path:
        return self._dir / "roots" / chain.partition(":")[2]

    def _root_of(self, manifest: str) -> str | None:
        entry = self._index["images"].get(manifest)
        if entry is None or entry["chain"] not in self._index["roots"]:
            return None
        return str(entry["chain"])

    def _hold(self, ref: Reference, known: dict[str, Any]) -> Image | None:
        chain = self._root_of(known["manifest"])
        if chain is None:
            return None
        self._held[chain] += 1
        self._index["roots"][chain]["used"] = time.time()
        config = self._index["images"][known["manifest"]]["config"]
        entrypoint, cmd = config.get("entrypoint"), config.get("cmd")
        return Image(
            reference=ref.canonical,
            image_id=ref.pinned(known["digest"]),
            chain=chain,
            root=str(self._root_dir(chain)),
            env=tuple(config.get("env") or ()),
            entrypoint=None if entrypoint is None else tuple(entrypoint),
            cmd=None if cmd is None else tuple(cmd),
            working_dir=str(config.get("working_dir") or ""),
            user=str(config.get("user") or ""),
        )

    def _usage(self) -> int:
        return sum(
            int(e["size"]) for kind in ("roots", "blobs") for e in self._index[kind].values()
        )

    def _evict(self) -> None:
        """Remove the least recently used blobs and roots nobody holds while over the bound."""
        doomed: list[Path] = []
        with self._lock:
            total = self._usage()
            if total <= self._max:
                return
            candidates = sorted(
                (
                    (e["used"], kind, key)
                    for kind in ("roots", "blobs")
                    for key, e in self._index[kind].items()
                ),
            )
            for _, kind, key in candidates:
                if total <= self._max:
                    break
                if kind == "roots" and self._held.get(key):
                    continue
                total -= int(self._index[kind].pop(key)["size"])
                path = (
                    self._root_dir(key)
                    if kind == "roots"
                    else unpacker.blob_path(self._dir / "blobs", key)
                )
                # Renamed under the lock: a root being deleted is never found, nor unpacked over.
                trash = self._dir / "tmp" / f"evicted-{uuid.uuid4().hex}"
                with contextlib.suppress(OSError):
                    path.rename(trash)
                    doomed.append(trash)
                logger.info("image cache: evicted %s %s (least recently used)", kind[:-1], key)
            self._save()
        for path in doomed:
            _delete(path)

    def _save(self) -> None:
        path = self._dir / "index.json"
        temporary = path.with_name(f".index.{uuid.uuid4().hex[:8]}")
        temporary.write_text(json.dumps(self._index))
        temporary.replace(path)

    def _load(self) -> None:
        """Read the index; forget what is missing on disk and delete what the index lacks."""
        shutil.rmtree(self._dir / "tmp", ignore_errors=True)
        (self._dir / "tmp").mkdir(parents=True, exist_ok=True)
        try:
            loaded = json.loads((self._dir / "index.json").read_text())
            if isinstance(loaded, dict):
                for kind in self._index:
                    self._index[kind] = dict(loaded.get(kind) or {})
        except (OSError, ValueError):
            pass
        roots = self._index["roots"]
        for chain in [c for c in roots if not self._root_dir(c).is_dir()]:
            del roots[chain]
        blobs = self._index["blobs"]
        for digest in [
            d for d in blobs if not unpacker.blob_path(self._dir / "blobs", d).is_file()
        ]:
            del blobs[digest]
        kept = {self._root_dir(c) for c in roots}
        kept |= {unpacker.blob_path(self._dir / "blobs", d) for d in blobs}
        for kind in ("roots", "blobs/sha256"):
            (self._dir / kind).mkdir(parents=True, exist_ok=True)
            for stray in (self._dir / kind).iterdir():
                if stray not in kept:  # unpacked or downloaded when the last process died
                    _delete(stray)
        self._save()
        with contextlib.suppress(OSError):
            os.chmod(self._dir, 0o700)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
