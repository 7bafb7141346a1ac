"""What an RQ job needs (settings, store, cluster), set once by the process that runs jobs.

RQ calls job functions by name with only their arguments, so the worker process installs its
context here at start (`kueue-tes worker`, or the worker thread of `kueue-tes serve`).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.settings import Settings
from app.store.base import TaskStore
from worker.cluster.base import Cluster


@dataclass(frozen=True)
class Context:
    """The worker process's settings, store and cluster."""

    settings: Settings
    store: TaskStore
    cluster: Cluster | None = None


_current: Context | None = None


def install(context: Context) -> None:
    """Make ``context`` the one job functions use in this process."""
    global _current
    _current = context


def current() -> Context:
    """Return the installed context; fail clearly when a process forgot to install one."""
    if _current is None:
        raise RuntimeError("no worker context installed; start jobs through `kueue-tes worker`")
    return _current
