"""Cluster observations → TES state and logs (pure; design sections 10 and 11).

The watcher keeps the latest Job, Pod and Workload of each task and asks :func:`decide` what
they mean; :func:`read_report` parses the sequencer's report. The watcher times the waits that
fail after a grace (:func:`waits` names them, :class:`Timing` says since when): decide is pure.

Kueue's words relied on: Workload conditions ``QuotaReserved``, ``Admitted``, ``Evicted``; an
``Evicted`` reason ``Deactivated…`` (``DeactivatedDueToMaximumExecutionTimeExceeded``,
``…RequeuingLimitExceeded``) or ``InactiveWorkload`` (before v0.10) means Kueue gave up. A
missing WorkloadPriorityClass keeps Kueue from creating a Workload; it says so in a Warning Event
``WorkloadPriorityClassNotFound`` on the Job, recognised here in Events and Workload conditions.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.models import State
from worker import admission, podlayout
from worker.cluster.base import QUEUE_NAME
from worker.report import Report

Json = dict[str, Any]

#: Names of our own containers in the task pod (docs/task-pod.md).
SETUP, SEQUENCER, FINISH = "setup", "sequencer", "finish"
PRIORITY_CLASS, PRIORITY_MISSING = admission.PRIORITY_CLASS, admission.PRIORITY_MISSING
#: kubelet retries the first pull errors (the task fails after a grace); the others never heal.
PULL_RETRIED = frozenset({"ErrImagePull", "ImagePullBackOff"})
PULL_FATAL = frozenset({"InvalidImageName", "ErrImageNeverPull"})
#: System log lines that describe the present; a newer one replaces its predecessor in place.
WAITING_KUEUE, WAITING_NODE = "waiting for Kueue: ", "waiting for a node: "
WAITING_POD = "waiting for the task pod: "
WAITING_IMAGE = "waiting for an image: "
NO_WORKLOAD, POD_REFUSED = "no-workload", "pod-refused"
_FINISH_CODES = {0: State.COMPLETE, 1: State.EXECUTOR_ERROR}
_PULLS = PULL_RETRIED | PULL_FATAL
_ALL = ("initContainerStatuses", "containerStatuses")
_WAITING = (WAITING_KUEUE, WAITING_NODE, WAITING_POD, WAITING_IMAGE)

#: The last line of a cancelled attempt, the same whichever process finishes the cancel.
CANCELED_NOTE = "canceled; the task pod is gone"


@dataclass(frozen=True)
class Objects:
    """What the cluster last showed of one task; None where an object does not exist."""

    job: Json | None = None
    pod: Json | None = None
    workload: Json | None = None
    events: tuple[Json, ...] = ()  # Warning Events about the Job, where the cluster gives them
    report: Report | None = None  # the sequencer's report so far (ready layout, worker.progress)
    #: Every live pod of the task by uid; ``pod`` is the current attempt's (worker/pods.py).
    pods: Mapping[str, Json] = field(default_factory=dict)

    @property
    def gone(self) -> bool:
        """Nothing of the task exists any more."""
        return self.job is None and self.pod is None and not self.pods


@dataclass(frozen=True)
class Timing:
    """The time now (epoch seconds), when each of :func:`waits` began, and the graces."""

    now: float = 0.0
    since: Mapping[str, float] = field(default_factory=dict)
    image_pull_grace: float = 300.0
    no_workload_grace: float = 60.0
    pod_create_grace: float = 600.0

    def waited(self, key: str, start: float | None = None) -> float:
        """Return how long the wait ``key`` has lasted (from ``start`` where it is known)."""
        return self.now - (start if start is not None else self.since.get(key, self.now))


@dataclass
class Decision:
    """What the watcher should do: move the task, note why, end the attempt."""

    state: State | None = None
    system_logs: list[str] = field(default_factory=list)
    executor_logs: list[Json] | None = None
    finished: bool = False
    requeued: bool = False
    trust_report: bool = False  # the pod ran to its end: the sequencer's verdict decides


def condition(obj: Json | None, kind: str) -> Json | None:
    """Return an object's status condition of type ``kind``, or None."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return None


def _true(obj: Json | None, kind: str) -> bool:
    cond = condition(obj, kind)
    return bool(cond and cond.get("status") == "True")


def _statuses(pod: Json | None, *keys: str) -> list[Json]:
    status = (pod or {}).get("status") or {}
    return [entry for key in keys or _ALL for entry in status.get(key) or ()]


def _state(status: Json, kind: str) -> Json:
    return dict((status.get("state") or {}).get(kind) or {})


def _meta(obj: Json | None) -> Json:
    return dict((obj or {}).get("metadata") or {})


def _why(cond: Json, default: str = "") -> str:
    reason, message = cond.get("reason") or default, cond.get("message")
    return f"{reason}: {message}" if message else str(reason)


def _epoch(stamp: object) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _who(name: str) -> str:
    return f"executor {name[9:]}" if name.startswith("executor-") else f"the {name} container"


def _image(pod: Json | None, status: Json) -> str:
    return str(_spec(pod, str(status.get("name"))).get("image") or status.get("image") or "?")


def _spec(pod: Json | None, name: str) -> Json:
    spec = (pod or {}).get("spec") or {}
    for container in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
        if container.get("name") == name:
            return dict(container)
    return {}


def executor_logs(pod: Json | None) -> list[Json]:
    """Return ExecutorLogs of the executors that have ended, from pod status alone."""
    logs: list[Json] = []
    for status in _executors(pod):
        ended = _state(status, "terminated")
        if not ended:
            break
        message = _object(ended.get("message"))
        if "exit_code" in message and not message.get("skipped"):
            code, start, end = message["exit_code"], message.get("start"), message.get("end")
        elif not message and ended.get("exitCode", 0) != 0:
            # The runner was killed with its executor (OOM, deletion): the container's own code.
            code, start, end = ended["exitCode"], None, None
        else:
            break
        entry = {"exit_code": int(code), "start_time": start or ended.get("startedAt")}
        logs.append({**entry, "end_time": end or ended.get("finishedAt")})
        if not message:
            break
    return logs


def _object(text: object) -> Json:
    try:
        value = json.loads(str(text or "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _executors(pod: Json | None) -> list[Json]:
    # init containers in the init layout, main containers in the ready one (kubelet sorts
    # those by name: executor-10 before executor-2)
    found = [s for s in _statuses(pod) if str(s.get("name", "")).startswith("executor-")]
    return sorted(found, key=lambda s: int(n) if (n := str(s["name"])[9:]).isdigit() else 0)


def _ran(status: Json, started: Collection[int] | None = None) -> bool:
    # Running, or ended having run: an executor skipped after a failed stage-in never ran. In
    # the ready layout every executor's container runs from the start, waiting for its turn:
    # there the sequencer's report (``started``) tells which one really ran.
    state = status.get("state") or {}
    ended = state.get("terminated")
    if ended is not None:
        return not _object(ended.get("message")).get("skipped")
    if "running" not in state:
        return False
    index = str(status.get("name", ""))[9:]
    return started is None or (index.isdigit() and int(index) in started)


def _pod_failure(pod: Json) -> str | None:
    # Why the pod ended without a verdict: the pod's own reason, else the first failed container.
    if (pod.get("status") or {}).get("reason"):
        return f"the task pod ended: {_why(pod['status'])}"
    for entry in _statuses(pod):
        ended = _state(entry, "terminated")
        if ended and ended.get("exitCode", 0) != 0:
            reason, code = ended.get("reason") or "Error", ended.get("exitCode")
            return f"container {entry.get('name')} ended with {reason} (exit code {code})"
    return None


# -- Kueue --------------------------------------------------------------------------------------


def _priority_missing(objects: Objects) -> Decision | None:
    text = admission.priority_missing(objects.job, objects.workload, objects.events)
    return None if text is None else Decision(State.SYSTEM_ERROR, [text], finished=True)


def _evicted(workload: Json | None, objects: Objects) -> Decision | None:
    cond = condition(workload, "Evicted") or {}
    if cond.get("status") != "True":
        return None
    why = _why(cond, "Evicted")
    if why.startswith(("Deactivated", "InactiveWorkload")):
        hint = "its Workload was deactivated"
        if "MaximumExecutionTime" in why:
            hint = "the task ran longer than its maximum run time (backend_parameters)"
        elif "RequeuingLimit" in why or "backoffLimitCount" in why:
            hint = "the task was evicted more often than Kueue's requeuing limit allows"
        elif "AdmissionCheck" in why:
            hint = "an admission check rejected it"
        return Decision(State.SYSTEM_ERROR, [f"Kueue stopped the task: {hint} ({why})"], None, True)
    # Kueue first gives the eviction as the reason it waits: say that only once.
    again = [w for w in _waiting(workload) if w != WAITING_KUEUE + str(cond.get("message"))]
    first = f"evicted by Kueue ({why}); the task waits to run again"
    if cond.get("reason") == podlayout.PODS_READY_TIMEOUT:
        first = podlayout.pods_ready_timeout(why, objects.pod, objects.job, workload)
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
    meta = _meta(job)
    waited = timing.waited(NO_WORKLOAD, _epoch(meta.get("creationTimestamp")))
    if waited < timing.no_workload_grace:
        return Decision(State.QUEUED)
    wanted = admission.unchecked_class(job)
    if wanted is not None:  # the likeliest cause: no released Kueue says so (worker/admission.py)
        text = admission.no_workload_for(job, wanted, timing.no_workload_grace)
        return Decision(State.SYSTEM_ERROR, [text], finished=True)
    labels, namespace = meta.get("labels") or {}, meta.get("namespace", "?")
    checks = [f"that Kueue manages namespace {namespace} (managedJobsNamespaceSelector)"]
    checks += [f"that the Job carries the {QUEUE_NAME} label"] if QUEUE_NAME not in labels else []
    text = (
        f"Kueue has created no Workload for Job {meta.get('name', '?')} in "
        f"{timing.no_workload_grace:g} s, so it does not seem to manage this namespace; the "
        f"operator should check {' and '.join(checks)}"
    )
    return Decision(State.QUEUED, [text])


# -- the pod --------------------------------------------------------------------------------------


def _oom(pod: Json | None) -> Decision | None:
    killed = [s for s in _statuses(pod) if _state(s, "terminated").get("reason") == "OOMKilled"]
    if not killed:
        return None
    # An executor's OOM kill is the cause; ours may follow as the pod goes down.
    killed.sort(key=lambda s: not str(s.get("name", "")).startswith("executor-"))
    name = str(killed[0].get("name", ""))
    limit = ((_spec(pod, name).get("resources") or {}).get("limits") or {}).get("memory")
    of = f" of {limit}" if limit else ""
    text = f"{_who(name)} was killed for exceeding its memory limit{of}"
    if name.startswith("executor-"):
        text += "; ask for more memory (resources.ram_gb)"
        return Decision(State.EXECUTOR_ERROR, [text], executor_logs(pod), finished=True)
    text += "; the operator can raise KUEUE_TES_SIDECAR_MEMORY"
    return Decision(State.SYSTEM_ERROR, [text], executor_logs(pod), finished=True)


def _pull_errors(pod: Json | None, reasons: frozenset[str] = _PULLS) -> list[Json]:
    return [s for s in _statuses(pod) if _state(s, "waiting").get("reason") in reasons]


def _pull_failure(pod: Json | None, timing: Timing) -> Decision | None:
    for status in _pull_errors(pod):
        name, waiting = str(status.get("name")), _state(status, "waiting")
        retried = waiting.get("reason") in PULL_RETRIED
        if retried and timing.waited(f"pull:{name}") < timing.image_pull_grace:
            continue
        after = f" for {timing.image_pull_grace:g} s" if retried else ""
        text = (
            f"{_who(name)}: the image {_image(pod, status)} cannot be pulled{after} "
            f"({_why(waiting)}); check the image name and that the cluster can reach its registry"
        )
        return Decision(State.SYSTEM_ERROR, [text], executor_logs(pod), finished=True)
    return None


def _pod_notes(pod: Json | None, timing: Timing) -> list[str]:
    grace = f"the task fails if it still fails after {timing.image_pull_grace:g} s"
    # The registry's words change with each try (ErrImagePull, then ImagePullBackOff): the
    # line says why the pull fails now, in place of the one before.
    notes = [
        f"{WAITING_IMAGE}{_who(str(s.get('name')))}: pulling {_image(pod, s)} fails "
        f"({_why(_state(s, 'waiting'))}); {grace}"
        for s in _pull_errors(pod)
    ]
    scheduled = condition(pod, "PodScheduled") or {}
    if scheduled.get("status") == "False" and scheduled.get("message"):
        notes.append(WAITING_NODE + str(scheduled["message"]))
    return notes


def _image_notes(pod: Json | None, report: Report | None = None) -> list[str]:
    # kubelet's imageID is the digest the image resolved to: what the executor really ran.
    started = (report.started if report else {}) if podlayout.ready(pod) else None
    return [
        f"{_who(str(s.get('name')))} ran {_image(pod, s)} as {s['imageID']}"
        for s in _executors(pod)
        if s.get("imageID") and _ran(s, started)
    ]


def waits(objects: Objects) -> set[str]:
    """Return the keys of the waits that ``objects`` show, for the watcher to time."""
    keys = {f"pull:{s.get('name')}" for s in _pull_errors(objects.pod, PULL_RETRIED)}
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
    why = admission.explain(refusal)
    if refusal.final or timing.waited(POD_REFUSED, refusal.since) >= grace:
        how = "" if refusal.final else f" for {grace:g} s"
        text = f"the cluster refused to create the task pod{how}: {why}"
        return Decision(State.SYSTEM_ERROR, [text], finished=True)
    text = f"{WAITING_POD}the cluster refuses to create it: {why}; the task fails after {grace:g} s"
    return Decision(State.INITIALIZING, [text])


def _ended(pod: Json | None, job: Json | None) -> Decision | None:
    phase = ((pod or {}).get("status") or {}).get("phase")
    job_ended = _true(job, "Complete") or _true(job, "Failed")
    if pod is not None and phase == "Failed" and _true(pod, "DisruptionTarget") and not job_ended:
        # podFailurePolicy ignores disruptions: the Job controller starts a new pod.
        why = _why(condition(pod, "DisruptionTarget") or {}, "DisruptionTarget")
        name = _meta(pod).get("name", "?")
        return Decision(None, [f"the task pod {name} was stopped ({why}); the Job starts another"])
    if not job_ended and phase not in ("Succeeded", "Failed"):
        return None
    code = next(
        (int(t.get("exitCode", 2)) for s in _statuses(pod, "containerStatuses")
         if s.get("name") == FINISH and (t := _state(s, "terminated"))),
        None,
    )  # fmt: skip
    final = _FINISH_CODES.get(-1 if code is None else code, State.SYSTEM_ERROR)
    why = (pod and _pod_failure(pod)) or "the task pod ended before the sequencer's verdict"
    logs = [why] if code is None else []
    return Decision(final, logs, executor_logs=executor_logs(pod), finished=True, trust_report=True)


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
    if not _true(workload, "Admitted") and (job or {}).get("spec", {}).get("suspend", True):
        if workload is None and job is not None:
            return _unmanaged(job, timing)
        return Decision(State.QUEUED, _waiting(workload))
    failed = (
        _oom(pod) or _pull_failure(pod, timing) or _pod_refused(objects, timing) or _ended(pod, job)
    )
    if failed is not None:
        failed.system_logs[:0] = _image_notes(pod, objects.report)
        return failed
    notes = _image_notes(pod, objects.report) + _pod_notes(pod, timing)
    if podlayout.ready(pod):  # every container runs from the start: the report tells
        report = objects.report
        ran = report is not None and report.ran
        logs = report.progress() if report is not None else []
        return Decision(State.RUNNING if ran else State.INITIALIZING, notes, logs or None)
    if any(_ran(s) for s in _executors(pod)):
        return Decision(State.RUNNING, notes, executor_logs=executor_logs(pod))
    return Decision(State.INITIALIZING, notes)


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
