"""Task ids: lowercase ULIDs, so one id is TES id, page cursor, RQ job id and Kubernetes name."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase
_LENGTH = 26
_lock = threading.Lock()
_last = (0, 0)


def _encode(value: int) -> str:
    chars = []
    for _ in range(_LENGTH):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(now_ms: int | None = None) -> str:
    """Return a new id: 48 bits of milliseconds then 80 bits that grow within a millisecond."""
    global _last
    with _lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        last_ms, last_rand = _last
        if ms <= last_ms:
            # Same (or a stepped-back) clock: stay monotonic so newer ids always sort later.
            ms, rand = last_ms, last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last = (ms, rand)
    return _encode((ms << 80) | (rand & ((1 << 80) - 1)))


def is_valid(task_id: str) -> bool:
    """Tell whether ``task_id`` has the shape of one of our ids."""
    return len(task_id) == _LENGTH and all(c in _ALPHABET for c in task_id) and task_id[0] <= "7"


def created_at(task_id: str) -> float:
    """Return the creation time (seconds since the epoch) an id carries."""
    ms = 0
    for char in task_id[:10]:
        ms = ms * 32 + _ALPHABET.index(char)
    return ms / 1000.0
