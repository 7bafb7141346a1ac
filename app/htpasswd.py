"""Basic users from an htpasswd file with bcrypt hashes, as ``htpasswd -B`` writes them.

A line is ``name:hash`` and may carry a third field of comma-separated flags, ``admin`` and
``group:<name>``; Apache and nginx ignore what follows the hash, so the file stays usable by
both. The file is re-read when it changes (a mounted Secret is updated in place).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bcrypt

log = logging.getLogger(__name__)

#: bcrypt in the modular crypt format; htpasswd -B writes $2y$.
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
#: bcrypt reads at most this many bytes of a password; htpasswd truncates the same way.
_BCRYPT_MAX = 72
#: How often the file's identity is looked at, at most.
RELOAD_CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class User:
    """One line of the file, without its hash."""

    name: str
    admin: bool = False
    groups: frozenset[str] = frozenset()


def parse(text: str, source: str) -> dict[str, tuple[User, bytes]]:
    """Return each user and bcrypt hash of an htpasswd text; ValueError names a bad line."""
    users: dict[str, tuple[User, bytes]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        hashed, _, flags = rest.partition(":")
        where = f"{source}:{number}"
        if not colon or not name or not hashed:
            raise ValueError(f"{where}: not a `name:hash` line")
        if not _BCRYPT.fullmatch(hashed):
            raise ValueError(
                f"{where}: user '{name}' has no bcrypt hash; write it with `htpasswd -B`"
            )
        admin, groups = False, set()
        for flag in (part.strip() for part in flags.split(",")):
            if flag == "admin":
                admin = True
            elif flag.startswith("group:") and flag[len("group:") :]:
                groups.add(flag[len("group:") :])
            elif flag:
                raise ValueError(
                    f"{where}: user '{name}': unknown flag '{flag}'; use admin or group:<name>"
                )
        if name in users:
            raise ValueError(f"{where}: user '{name}' is listed twice")
        users[name] = (User(name, admin, frozenset(groups)), hashed.encode())
    return users


class Users:
    """The users of one htpasswd file, re-read when it changes."""

    def __init__(
        self, path: Path, clock: Callable[[], float], on_change: Callable[[], None] = lambda: None
    ) -> None:
        """Read the file now (ValueError if it is missing or malformed).

        ``on_change`` runs after the file was re-read, so that what was checked against the
        old users is forgotten.
        """
        self.path, self.clock, self.on_change = path, clock, on_change
        self._lock = threading.Lock()
        self._checked_at = clock()
        self._stamp, self._users, self._dummy = self._read()

    def _read(self) -> tuple[tuple[int, int, int], dict[str, tuple[User, bytes]], bytes]:
        try:
            stat = os.stat(self.path)
            users = parse(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"KUEUE_TES_BASIC_USERS_FILE: cannot read {self.path}: {exc}") from exc
        # Unknown names are checked against a hash of the same cost, so that timing does not
        # tell which names exist.
        cost = next((int(h[4:6]) for _, h in users.values()), 5)
        dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino), users, dummy

    def maybe_reload(self) -> None:
        """Re-read the file if it changed; look at most every RELOAD_CHECK_SECONDS."""
        now = self.clock()
        if now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            if now - self._checked_at < RELOAD_CHECK_SECONDS:
                return
            self._checked_at = now
            try:
                stat = os.stat(self.path)
                if (stat.st_mtime_ns, stat.st_size, stat.st_ino) == self._stamp:
                    return
                self._stamp, self._users, self._dummy = self._read()
            except (OSError, ValueError) as exc:
                log.error("Basic users not reloaded, the previous ones stay: %s", exc)
                return
            self.on_change()
            log.info("Basic users reloaded from %s: %d users", self.path, len(self._users))

    def check(self, name: str, password: bytes) -> User | None:
        """Return the user if the password is right, else None (slow: bcrypt)."""
        self.maybe_reload()
        found = self._users.get(name)
        hashed = found[1] if found else self._dummy
        right = bcrypt.checkpw(password[:_BCRYPT_MAX], hashed)
        return found[0] if found and right else None
