"""What the auth modules share: the principal, their errors, and a small expiring cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

#: The principal of every request when authentication is off.
ANONYMOUS = "anonymous"

V = TypeVar("V")


@dataclass(frozen=True)
class Principal:
    """Who sends a request: the owner of the tasks it creates."""

    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    admin: bool = False  # sees and cancels every task

    def owner_filter(self) -> str | None:
        """Return the owner whose tasks this principal sees; None: every owner's."""
        return None if self.admin else self.name


class Unauthorized(Exception):
    """Credentials are missing, malformed or wrong: a 401.

    ``error`` is the RFC 6750 error code for a Bearer challenge (``invalid_token``,
    ``invalid_request``), None when no credentials came. The message never holds a secret.
    """

    def __init__(self, message: str, scheme: str | None = None, error: str | None = None):
        """Remember what to tell the client."""
        super().__init__(message)
        self.scheme, self.error = scheme, error


class Unavailable(Exception):
    """The credentials cannot be checked now (the identity provider is unreachable): a 503."""


class ExpiringCache(Generic[V]):
    """A bounded map whose entries each end at their own time; safe across threads.

    Checked credentials are kept here so that a client polling with the same token or
    password pays for signature or bcrypt checks once, not on every request.
    """

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        """Keep at most ``size`` entries (the least recently stored go first)."""
        self.size, self.clock = size, clock
        self._items: OrderedDict[bytes, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> V | None:
        """Return the value stored under ``key`` if it has not ended."""
        item = self._items.get(key)
        if item is None:
            return None
        if self.clock() >= item[0]:
            with self._lock:
                self._items.pop(key, None)
            return None
        return item[1]

    def put(self, key: bytes, value: V, until: float) -> None:
        """Store ``value`` under ``key`` until the clock reads ``until``."""
        if self.size <= 0 or until <= self.clock():
            return
        with self._lock:
            self._items[key] = (until, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (the users file changed, say)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        """Return how many entries are held, ended or not."""
        return len(self._items)
