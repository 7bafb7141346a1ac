"""Cluster observations → TES state and logs (pure; design sections 10 and 11).

The watcher keeps the latest Job, Pod and Workload of each task and asks :func:`decide` what
they mean: Kueue's side is read here, the task pod's in worker/podstates.py. The watcher times
the waits that fail after a grace (:func:`waits` names them, :class:`Timing` says since when):
decide is pure.

Kueue's words relied on: Workload conditions ``QuotaReserved``, ``Admitted``, ``Evicted``; an
``Evicted`` reason ``Deactivated…`` (``DeactivatedDueToMaximumExecutionTimeExceeded``,
``…RequeuingLimitExceeded``) or ``InactiveWorkload`` (before v0.10) means Kueue gave up. A
missing WorkloadPriorityClass keeps Kueue from creating a Workload; it says so in a Warning Event
``WorkloadPriorityClassNotFound`` on the Job, recognised here in Events and Workload conditions.
"""

from __future__ import annotations

from app.models import State
from worker import admission, podlayout, podstates
from worker.cluster.base import QUEUE_NAME
from worker.decisions import Decision, Json, Objects, Timing, condition, epoch, is_true, meta, why
from worker.podstates import SEQUENCER, WAITING_IMAGE, WAITING_NODE, executor_logs

__all__ = [
    "CANCELED_NOTE",
    "NO_WORKLOAD",
    "POD_REFUSED",
    "PRIORITY_CLASS",
    "PRIORITY_MISSING",
    "SEQUENCER",
    "WAITING_KUEUE",
    "WAITING_POD",
    "Decision",
    "Objects",
    "Timing",
    "condition",
    "decide",
    "executor_logs",
    "merge_logs",
    "waits",
]

PRIORITY_CLASS, PRIORITY_MISSING = admission.PRIORITY_CLASS, admission.PRIORITY_MISSING
#: System log lines that describe the present; a newer one replaces its predecessor in place.
WAITING_KUEUE = "waiting for Kueue: "
WAITING_POD = "waiting for the task pod: "
NO_WORKLOAD, POD_REFUSED = "no-workload", "pod-refused"
_WAITING = (WAITING_KUEUE, WAITING_NODE, WAITING_POD, WAITING_IMAGE)

#: The last line of a cancelled attempt, the same whichever process finishes the cancel.
CANCELED_NOTE = "canceled; the task pod is gone"


# -- Kueue --------------------------------------------------------------------------------------


def _priority_missing(objects: Objects) -> Decision | None:
    text = admission.priority_missing(objects.job, objects.workload, objects.events)
    return None if text is None else Decision(State.SYSTEM_ERROR, [text], finished=True)


def _evicted(workload: Json | None, objects: Objects) -> Decision | None:
    cond = condition(workload, "Evicted") or {}
    if cond.get("status") != "True":
        return None
    said = why(cond, "Evicted")
    if said.startswith(("Deactivated", "InactiveWorkload")):
        hint = "its Workload was deactivated"
        if "MaximumExecutionTime" in said:
            hint = "the task ran longer than its maximum run time (backend_parameters)"
        elif "RequeuingLimit" in said or "backoffLimitCount" in said:
            hint = "the task was evicted more often than Kueue's requeuing limit allows"
        elif "AdmissionCheck" in said:
            hint = "an admission check rejected it"
        stopped = f"Kueue stopped the task: {hint} ({said})"
        return Decision(State.SYSTEM_ERROR, [stopped], None, True)
    # Kueue first gives the eviction as the reason it waits: say that only once.
    again = [w for w in _waiting(workload) if w != WAITING_KUEUE + str(cond.get("message"))]
    first = f"evicted by Kueue ({said}); the task waits to run again"
    if cond.get("reason") == podlayout.PODS_READY_TIMEOUT:
        first = podlayout.pods_ready_timeout(said, objects.pod, objects.job, workload)
    logs = [first, *again]
    return Decision(State.QUEUED, logs, requeued=True)


def _waiting(workload: Json | None) -> list[str]:
    reserved, admitted = condition(workload, "QuotaReserved"), condition(workload, "Admitted")
    if reserved and reserved.get("status") == "False" and reserved.get("message"):
        return [WAITING_KUEUE + str(reserved["message"])]
    if reserved and admitted and admitted.get("status") == "False" and admitted.get("message"):
        # Admission checks pending: each check's own message says what it waits for.
        return [WAITING_KUEUE + (admission.checks_waiting(workload) or str(admitted["message"]))]
    return []


def _unmanaged(job: Json, timing: Timing) -> Decision:
    info = meta(job)
    waited = timing.waited(NO_WORKLOAD, epoch(info.get("creationTimestamp")))
    if waited < timing.no_workload_grace:
        return Decision(State.QUEUED)
    wanted = admission.unchecked_class(job)
    if wanted is not None:  # the likeliest cause: no released Kueue says so (worker/admission.py)
        text = admission.no_workload_for(job, wanted, timing.no_workload_grace)
        return Decision(State.SYSTEM_ERROR, [text], finished=True)
    labels, namespace = info.get("labels") or {}, info.get("namespace", "?")
    checks = [f"that Kueue manages namespace {namespace} (managedJobsNamespaceSelector)"]
    checks += [f"that the Job carries the {QUEUE_NAME} label"] if QUEUE_NAME not in labels else []
    text = (
        f"Kueue has created no Workload for Job {info.get('name', '?')} in "
        f"{timing.no_workload_grace:g} s, so it does not seem to manage this namespace; the "
        f"operator should check {' and '.join(checks)}"
    )
    return Decision(State.QUEUED, [text])


# -- between the Job and its pod ----------------------------------------------------------------


def waits(objects: Objects) -> set[str]:
    """Return the keys of the waits that ``objects`` show, for the watcher to time."""
    keys = podstates.pull_waits(objects.pod)
    if objects.job is not None and objects.workload is None:
        keys.add(NO_WORKLOAD)
    if admission.refusal(objects.events, objects.workload, objects.pod) is not None:
        keys.add(POD_REFUSED)
    return keys


def _pod_refused(objects: Objects, timing: Timing) -> Decision | None:
    # The Job controller retries a refused pod for ever while the Workload holds its quota.
    refusal = admission.refusal(objects.events, objects.workload, objects.pod)
    grace = timing.pod_create_grace
    if refusal is None:
        return None
    explained = admission.explain(refusal)
    if refusal.final or timing.waited(POD_REFUSED, refusal.since) >= grace:
        how = "" if refusal.final else f" for {grace:g} s"
        text = f"the cluster refused to create the task pod{how}: {explained}"
        return Decision(State.SYSTEM_ERROR, [text], finished=True)
    text = f"the cluster refuses to create it: {explained}; the task fails after {grace:g} s"
    return Decision(State.INITIALIZING, [WAITING_POD + text])


def decide(state: State, objects: Objects, timing: Timing | None = None) -> Decision:
    """Map what the cluster shows of a task onto its next TES state."""
    timing = timing or Timing()
    if state is State.CANCELING:
        return Decision(state=State.CANCELED if objects.gone else None, finished=objects.gone)
    if objects.gone:
        return Decision()
    workload, pod, job = objects.workload, objects.pod, objects.job
    refused = _priority_missing(objects) or _evicted(workload, objects)
    if refused is not None:
        return refused
    if not is_true(workload, "Admitted") and (job or {}).get("spec", {}).get("suspend", True):
        if workload is None and job is not None:
            return _unmanaged(job, timing)
        return Decision(State.QUEUED, _waiting(workload))
    failed = (
        podstates.oom(pod)
        or podstates.pull_failure(pod, timing)
        or _pod_refused(objects, timing)
        or podstates.ended(pod, job)
    )
    if failed is not None:
        failed.system_logs[:0] = podstates.image_notes(pod, objects.report)
        return failed
    return podstates.progress(objects, timing)


def _subject(line: str) -> str | None:
    # What a "waiting for …" line is about: the wait, and for an image the container too.
    prefix = next((p for p in _WAITING if line.startswith(p)), None)
    if prefix != WAITING_IMAGE:
        return prefix
    return line[: line.find(": ", len(prefix)) + 1]


def merge_logs(current: list[str], notes: list[str]) -> list[str] | None:
    """Return ``current`` with the new ``notes`` added, or None if nothing is new."""
    # A "waiting for …" line replaces its predecessor about the same wait among the lines of
    # that wait at the end: a wait that Kueue re-explains every few seconds stays one line that
    # says why the task waits now; so does each container's failing image pull (several pull
    # at once in the ready layout).
    out = list(current)
    for note in notes:
        if note in out:
            continue
        subject, at = _subject(note), len(out)
        prefix = next((p for p in _WAITING if note.startswith(p)), "")
        while prefix and at and out[at - 1].startswith(prefix) and _subject(out[at - 1]) != subject:
            at -= 1  # the image lines of other containers
        if subject and at and _subject(out[at - 1]) == subject:
            out[at - 1] = note
        else:
            out.append(note)
    return out if out != current else None
