"""How the SQLite store's writers share its file: the write turn, and checkpoints off the way.

* **The write turn.** Waiting for SQLite's own write lock is polling with sleeps of 1 to
  100 ms, so processes that write at once (the API's workers, the worker, the watcher) waited
  tens of ms for each other. An ``flock`` on ``<file>-writer``, taken around every write
  transaction, queues them in the kernel instead, which wakes the next one as soon as the
  turn is free; threads of one process queue on a lock first.
* **Checkpoints.** SQLite copies the WAL back into the database (with two fsyncs) in the
  commit that crosses ``wal_autocheckpoint``, so that one commit, and every writer queued
  behind it, waited for the disk. Connections raise that threshold to a backstop, and a
  thread of the store runs a PASSIVE checkpoint every ``every`` write transactions instead;
  a PASSIVE checkpoint does not hold the write lock, so writers go on meanwhile.

No ``sqlite3`` here: the store passes the checkpoint in as a function.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.store.base import StoreError

log = logging.getLogger(__name__)

#: Write transactions between two background checkpoints.
EVERY = 200
#: Pages of WAL after which a committing connection checkpoints itself: the backstop for a
#: checkpoint thread that cannot keep up (SQLite's default is 1000).
BACKSTOP_PAGES = 20_000


class Writers:
    """The write turn and the checkpoints of one SQLite file, for one store in one process."""

    def __init__(self, path: Path, checkpoint: Callable[[], None], every: int = EVERY) -> None:
        """Queue writers on ``<path>-writer``; call ``checkpoint`` every ``every`` writes."""
        self._lock_path = path.with_name(path.name + "-writer")
        self._checkpoint, self._every = checkpoint, every
        self._turn = threading.Lock()  # the turn among this process's threads
        self._file: tuple[int, int] | None = None  # (pid, fd) of the lock file
        self._writes = 0
        self._due = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the write turn for one write transaction."""
        with self._turn:
            try:
                if self._file is None or self._file[0] != os.getpid():
                    # Per process: an inherited descriptor would share its lock with the parent.
                    fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                    self._file = (os.getpid(), fd)
                fd = self._file[1]
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise StoreError(
                    f"cannot lock {self._lock_path} for writing: {exc}; the store's directory "
                    "must be writable"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._writes += 1
            if self._writes % self._every == 0:
                self._wake()

    def _wake(self) -> None:
        """Ask the checkpoint thread (started here, per process) for a checkpoint."""
        self._due.set()
        thread = self._thread
        if (thread is None or not thread.is_alive()) and not self._closed:
            thread = threading.Thread(target=self._run, name="kueue-tes-checkpoint", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        while self._due.wait() and not self._closed:
            self._due.clear()
            try:
                self._checkpoint()
            except Exception as exc:  # the backstop checkpoints meanwhile; try again later
                log.warning("checkpoint of %s failed: %s", self._lock_path.parent, exc)

    def close(self) -> None:
        """Stop the checkpoint thread (waiting for a checkpoint under way) and the lock file."""
        self._closed = True
        self._due.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join()
        with self._turn:
            if self._file is not None and self._file[0] == os.getpid():
                os.close(self._file[1])
            self._file = None
