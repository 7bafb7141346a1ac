"""One watch thread per kind: list, then watch from the list's resourceVersion, for ever.

Library-free: ``worker.cluster.kubernetes`` hands each thread two callables, one that lists and
one that opens a watch stream, both raising our own errors. The thread keeps the last
resourceVersion it has seen (bookmarks included), resumes from it when a stream ends, lists
again when the API server says it is too old (410), and reports through ``sink``.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.cluster import k8s_errors
from worker.cluster.base import ClusterError, Kind, Observation, PermanentError
from worker.cluster.k8s_index import Index

log = logging.getLogger(__name__)

Json = dict[str, Any]
#: Longest pause between attempts while the API server fails.
MAX_BACKOFF = 30.0
#: Observations waiting for the watcher (ten seconds of its work); beyond, the threads wait.
MAX_PENDING = 10_000
KINDS: tuple[Kind, ...] = ("Job", "Pod", "Workload", "Event")
#: List items come without kind and apiVersion (watch events carry them): what to fill in.
API_VERSIONS: dict[Kind, str] = {
    "Job": "batch/v1",
    "Pod": "v1",
    "Workload": "kueue.x-k8s.io/v1beta2",
    "Event": "v1",
}


@dataclass
class Listing:
    """A full list of one kind and the resourceVersion to watch from."""

    items: list[Json] = field(default_factory=list)
    resource_version: str = ""


Lister = Callable[[], Listing]
Streamer = Callable[[str], Iterator[Json]]
Sink = Callable[[Observation | ClusterError], None]


def paged(kind: Kind, page: Callable[[str | None], Json]) -> Listing:
    """Read a list of ``kind`` through ``page`` (given each continue token, None first).

    The first page's resourceVersion is the listing's: the later ones continue the same read.
    """
    listing = Listing()
    token: str | None = None
    while True:
        answer = page(token)
        meta = answer.get("metadata") or {}
        for item in answer.get("items") or ():
            item.setdefault("apiVersion", API_VERSIONS[kind])
            item.setdefault("kind", kind)
            listing.items.append(item)
        if token is None:
            listing.resource_version = str(meta.get("resourceVersion") or "")
        token = meta.get("continue") or None
        if token is None:
            return listing


def json_lines(chunks: Iterable[bytes]) -> Iterator[Json]:
    """Yield the JSON objects of a watch stream, one a line, however the chunks cut them."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)


class Informer:
    """Follows one kind of object in a daemon thread and sinks what changes."""

    def __init__(
        self,
        kind: Kind,
        resource: str,
        namespace: str,
        lister: Lister,
        streamer: Streamer,
        index: Index,
        sink: Sink,
        stop: threading.Event,
        retry_seconds: float = 1.0,
        seed: Listing | None = None,
    ) -> None:
        """Follow ``kind``; ``seed`` is a listing the consumer has already seen (a snapshot)."""
        self.kind, self.resource, self.namespace = kind, resource, namespace
        self.lister, self.streamer, self.index, self.sink = lister, streamer, index, sink
        self.stop, self.retry_seconds, self.seed = stop, retry_seconds, seed
        self.resource_version: str | None = None
        self.thread = threading.Thread(target=self.run, name=f"k8s-watch-{kind}", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self.thread.start()

    def run(self) -> None:
        """List and watch until ``stop`` is set; never dies of an error."""
        delay, gone = self.retry_seconds, float("-inf")
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    self.resource_version = self._relist()
                opened, events = time.monotonic(), 0
                for event in self.streamer(self.resource_version):
                    if self.stop.is_set():
                        return
                    self._event(event)
                    events += 1
                # The server ended the watch (its timeout): resume from where we are, at once,
                # unless it ends watches as soon as they open (a proxy?): then not in a busy loop.
                delay = self.retry_seconds
                if not events and time.monotonic() - opened < 1.0:
                    self.stop.wait(delay)
            except k8s_errors.Gone:
                log.info(
                    "%s watch: resourceVersion %s is too old; listing again",
                    self.kind,
                    self.resource_version,
                )
                self.resource_version = None
                if time.monotonic() - gone < 1.0:
                    # Expired again right after a list: do not hammer the API server with lists.
                    self.stop.wait(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                gone = time.monotonic()
            except ClusterError as exc:
                if self.stop.is_set():
                    return
                if isinstance(exc, PermanentError):
                    self.sink(exc)
                log.warning("%s watch failed (retrying in %.1fs): %s", self.kind, delay, exc)
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            except Exception:
                if self.stop.is_set():
                    return
                # A bug here must not end the watch; the watcher's resync repairs the picture.
                log.exception("%s watch: unexpected error; retrying in %.1fs", self.kind, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    def _relist(self) -> str:
        if self.seed is not None:
            # The consumer has this listing from snapshot(): learn it quietly, watch from it.
            listing, self.seed = self.seed, None
            self.index.relisted(self.kind, listing.items)
        else:
            listing = self.lister()
            for observation in self.index.relisted(self.kind, listing.items):
                self.sink(observation)
        log.debug(
            "%s watch: %d listed at %s", self.kind, len(listing.items), listing.resource_version
        )
        return listing.resource_version

    def _event(self, event: Json) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        if kind == "ERROR":
            raise k8s_errors.from_status(
                obj.get("code"), obj, "watch", self.resource, self.namespace
            )
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "DELETED":
            observations = self.index.remove(self.kind, obj)
        elif kind in ("ADDED", "MODIFIED"):
            observations = self.index.update(self.kind, obj)
        else:
            observations = []  # BOOKMARK: only its resourceVersion matters
        for observation in observations:
            self.sink(observation)
        if version:
            self.resource_version = str(version)


class Watches:
    """The informers (Jobs, Pods, Workloads, Events), started lazily, and the queue they fill."""

    def __init__(
        self,
        namespace: str,
        resources: dict[Kind, str],
        lister: Callable[[Kind], Listing],
        streamer: Callable[[Kind, str], Iterator[Json]],
        index: Index,
        retry_seconds: float = 1.0,
    ) -> None:
        """Watch ``namespace`` with ``lister`` and ``streamer``, mapping through ``index``."""
        self.namespace, self.resources = namespace, resources
        self.lister, self.streamer, self.index = lister, streamer, index
        self.retry_seconds = retry_seconds
        self.stopped = threading.Event()
        self._queue: queue.Queue[Observation | ClusterError] = queue.Queue(MAX_PENDING)
        self._lock = threading.Lock()
        self._informers: list[Informer] = []
        self._seeds: dict[Kind, Listing] = {}

    def seed(self, listings: dict[Kind, Listing]) -> None:
        """Offer a snapshot's listings, so watches that have not started yet continue from them."""
        with self._lock:
            if not self._informers:
                self._seeds = dict(listings)

    def discard(self) -> None:
        """Drop the observations waiting: a full listing taken after them supersedes them."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def drain(self, timeout: float) -> Iterator[Observation]:
        """Yield observations for at most ``timeout`` seconds; raise a watch's permanent error."""
        self._start()
        deadline = time.monotonic() + timeout
        while not self.stopped.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return
            if isinstance(item, ClusterError):
                raise item
            yield item

    def stop(self, join_seconds: float = 5.0) -> None:
        """Ask the threads to stop and wait for them a little (their reads are bounded)."""
        self.stopped.set()
        for informer in self._informers:
            if informer.thread.is_alive():
                informer.thread.join(timeout=join_seconds)

    def _start(self) -> None:
        with self._lock:
            if self._informers or self.stopped.is_set():
                return
            for kind in KINDS:
                self._informers.append(
                    Informer(
                        kind,
                        self.resources[kind],
                        self.namespace,
                        functools.partial(self.lister, kind),
                        functools.partial(self.streamer, kind),
                        self.index,
                        self._put,
                        self.stopped,
                        retry_seconds=self.retry_seconds,
                        seed=self._seeds.get(kind),
                    )
                )
            self._seeds = {}
        for informer in self._informers:
            informer.start()

    def _put(self, item: Observation | ClusterError) -> None:
        while not self.stopped.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue  # the watcher is behind: wait for it rather than drop a change
