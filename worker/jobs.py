"""The RQ jobs: submit a task to the cluster, cancel it (design section 6).

Until a cluster backend exists in this build, ``submit`` leaves the task QUEUED and says so in
the worker log: that is the true state of the task, not a result.
"""

from __future__ import annotations

import logging

from app.models import State
from worker import context

log = logging.getLogger(__name__)


def submit(task_id: str) -> str:
    """Submit a stored task to the cluster; return what happened, for the RQ result."""
    ctx = context.current()
    record = ctx.store.get(task_id)
    if record is None:
        log.warning("task %s: submit found no such task; nothing to do", task_id)
        return "missing"
    if record.state is not State.QUEUED:
        log.info("task %s: submit skipped, the task is %s", task_id, record.state.value)
        return f"skipped:{record.state.value}"
    log.warning("task %s: no cluster backend in this build, so the task stays QUEUED", task_id)
    return "queued:no-backend"


def cancel(task_id: str) -> str:
    """Cancel a task in the cluster; return what happened, for the RQ result."""
    ctx = context.current()
    record = ctx.store.get(task_id)
    if record is None:
        log.warning("task %s: cancel found no such task; nothing to do", task_id)
        return "missing"
    if record.state is not State.CANCELING:
        log.info("task %s: cancel skipped, the task is %s", task_id, record.state.value)
        return f"skipped:{record.state.value}"
    # Nothing of the task runs anywhere yet (no cluster backend), so the pod is gone.
    if ctx.store.transition(task_id, State.CANCELED, expect=[State.CANCELING]):
        log.info("task %s: CANCELED (no cluster objects existed)", task_id)
        return "canceled"
    return "raced"
