"""One active watcher: leader election through a ``coordination.k8s.io`` Lease (section 11).

The Lease itself sits behind :class:`LeaseHolder` (``KubernetesCluster`` implements it); the
:class:`Elector` only decides when to try and how long a won lease may be trusted. It trusts a
renewal for ``duration - renew`` seconds, measured from before the request was sent, so it stops
leading before any standby may take the Lease over (``duration`` after the last renewal), with
``renew`` seconds to spare for slow requests and clock drift.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from worker.cluster.base import ClusterError

log = logging.getLogger(__name__)


class LeaseHolder(Protocol):
    """What the Elector needs of the cluster: take, renew and give up a named Lease."""

    def try_lease(self, name: str, identity: str, duration_seconds: float) -> bool:
        """Acquire or renew the Lease for ``identity``; True if ``identity`` holds it now."""
        ...

    def release_lease(self, name: str, identity: str) -> None:
        """Give the Lease up if ``identity`` holds it, so that a standby takes over at once."""
        ...


class Elector:
    """Keeps trying to acquire, then renew, one Lease in a background thread."""

    def __init__(
        self,
        lease_holder: LeaseHolder,
        name: str,
        identity: str,
        duration_seconds: float = 15.0,
        renew_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Elect ``identity`` through the Lease ``name``; renew every ``renew_seconds``."""
        if not 0 < renew_seconds <= duration_seconds / 2:
            raise ValueError(
                f"the lease renew period ({renew_seconds:g} s) must be positive and at most half "
                f"the lease duration ({duration_seconds:g} s)"
            )
        self.holder, self.name, self.identity = lease_holder, name, identity
        self.duration, self.renew = float(duration_seconds), float(renew_seconds)
        self._clock = clock
        self._renewed: float | None = None  # clock reading before our last successful try
        self._leading = False  # what was last logged
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """Whether our last renewal is recent enough that no standby can hold the Lease."""
        with self._lock:
            renewed = self._renewed
        return renewed is not None and self._clock() - renewed < self.duration - self.renew

    def step(self) -> bool:
        """Try once to acquire or renew the Lease; return whether we lead now."""
        started = self._clock()
        try:
            held: bool | None = self.holder.try_lease(self.name, self.identity, self.duration)
        except ClusterError as exc:
            # Keep trusting the last renewal until it runs out: the API may be back in time.
            log.warning("lease %s: cannot renew as %s: %s", self.name, self.identity, exc)
            held = None
        with self._lock:
            if held:
                self._renewed = started
            elif held is False:
                self._renewed = None
        leading = self.is_leader
        if leading != self._leading:
            self._leading = leading
            what = "holds" if leading else "no longer holds"
            log.info("lease %s: %s %s it", self.name, self.identity, what)
        return leading

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                # A bug must not end the loop; the lease simply runs out if it keeps failing.
                log.exception("lease %s: election round failed", self.name)
            self._stop.wait(self.renew)

    def start(self) -> None:
        """Start the election thread."""
        self._thread = threading.Thread(target=self._loop, name="kueue-tes-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and give the Lease up, so that a standby takes over without waiting."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            held, self._renewed = self._renewed is not None, None
        if held:
            try:
                self.holder.release_lease(self.name, self.identity)
            except ClusterError as exc:
                log.warning("lease %s: cannot release it: %s", self.name, exc)
