"""The task pod's side of ``worker.states.decide`` (pure; design section 11).

Container statuses as kubelet writes them, read for what they mean to the task: the executors'
logs from the runners' termination messages, OOM kills, image pulls that fail, the pod's end
(``finish``'s exit code carries the sequencer's verdict), and the progress of a pod that runs.
In the ``ready`` layout every container runs from the start (worker/podlayout.py), so there the
sequencer's report, not the container states, says which executor ran.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from app.models import State
from worker import podlayout
from worker.decisions import Decision, Json, Objects, Timing, condition, is_true, meta, why
from worker.report import Report

#: Names of our own containers in the task pod (docs/task-pod.md).
SETUP, SEQUENCER, FINISH = "setup", "sequencer", "finish"
#: kubelet retries the first pull errors (the task fails after a grace); the others never heal.
PULL_RETRIED = frozenset({"ErrImagePull", "ImagePullBackOff"})
PULL_FATAL = frozenset({"InvalidImageName", "ErrImageNeverPull"})
#: System log lines that describe the present (worker/states.py merge_logs).
WAITING_NODE = "waiting for a node: "
WAITING_IMAGE = "waiting for an image: "
_FINISH_CODES = {0: State.COMPLETE, 1: State.EXECUTOR_ERROR}
_PULLS = PULL_RETRIED | PULL_FATAL
_ALL = ("initContainerStatuses", "containerStatuses")


def _statuses(pod: Json | None, *keys: str) -> list[Json]:
    status = (pod or {}).get("status") or {}
    return [entry for key in keys or _ALL for entry in status.get(key) or ()]


def _state(status: Json, kind: str) -> Json:
    return dict((status.get("state") or {}).get(kind) or {})


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
        return f"the task pod ended: {why(pod['status'])}"
    for entry in _statuses(pod):
        ended = _state(entry, "terminated")
        if ended and ended.get("exitCode", 0) != 0:
            reason, code = ended.get("reason") or "Error", ended.get("exitCode")
            return f"container {entry.get('name')} ended with {reason} (exit code {code})"
    return None


def oom(pod: Json | None) -> Decision | None:
    """Return the end of a task whose pod had a container killed for its memory, or None."""
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


def pull_waits(pod: Json | None) -> set[str]:
    """Return the keys of the pulls kubelet retries, for the watcher to time (``pull:<name>``)."""
    return {f"pull:{s.get('name')}" for s in _pull_errors(pod, PULL_RETRIED)}


def pull_failure(pod: Json | None, timing: Timing) -> Decision | None:
    """Return the end of a task whose image cannot be pulled (after the grace where it may)."""
    for status in _pull_errors(pod):
        name, waiting = str(status.get("name")), _state(status, "waiting")
        retried = waiting.get("reason") in PULL_RETRIED
        if retried and timing.waited(f"pull:{name}") < timing.image_pull_grace:
            continue
        after = f" for {timing.image_pull_grace:g} s" if retried else ""
        text = (
            f"{_who(name)}: the image {_image(pod, status)} cannot be pulled{after} "
            f"({why(waiting)}); check the image name and that the cluster can reach its registry"
        )
        return Decision(State.SYSTEM_ERROR, [text], executor_logs(pod), finished=True)
    return None


def _pod_notes(pod: Json | None, timing: Timing) -> list[str]:
    grace = f"the task fails if it still fails after {timing.image_pull_grace:g} s"
    # The registry's words change with each try (ErrImagePull, then ImagePullBackOff): the
    # line says why the pull fails now, in place of the one before.
    notes = [
        f"{WAITING_IMAGE}{_who(str(s.get('name')))}: pulling {_image(pod, s)} fails "
        f"({why(_state(s, 'waiting'))}); {grace}"
        for s in _pull_errors(pod)
    ]
    scheduled = condition(pod, "PodScheduled") or {}
    if scheduled.get("status") == "False" and scheduled.get("message"):
        notes.append(WAITING_NODE + str(scheduled["message"]))
    return notes


def image_notes(pod: Json | None, report: Report | None = None) -> list[str]:
    """Return a line for each executor that ran: the image digest it ran (kubelet's imageID)."""
    started = (report.started if report else {}) if podlayout.ready(pod) else None
    return [
        f"{_who(str(s.get('name')))} ran {_image(pod, s)} as {s['imageID']}"
        for s in _executors(pod)
        if s.get("imageID") and _ran(s, started)
    ]


def ended(pod: Json | None, job: Json | None) -> Decision | None:
    """Return the end of the task once its pod (or Job) ended, or None while it has not."""
    phase = ((pod or {}).get("status") or {}).get("phase")
    job_ended = is_true(job, "Complete") or is_true(job, "Failed")
    if pod is not None and phase == "Failed" and is_true(pod, "DisruptionTarget") and not job_ended:
        # podFailurePolicy ignores disruptions: the Job controller starts a new pod.
        disrupted = why(condition(pod, "DisruptionTarget") or {}, "DisruptionTarget")
        name = meta(pod).get("name", "?")
        return Decision(
            None, [f"the task pod {name} was stopped ({disrupted}); the Job starts another"]
        )
    if not job_ended and phase not in ("Succeeded", "Failed"):
        return None
    code = next(
        (int(t.get("exitCode", 2)) for s in _statuses(pod, "containerStatuses")
         if s.get("name") == FINISH and (t := _state(s, "terminated"))),
        None,
    )  # fmt: skip
    final = _FINISH_CODES.get(-1 if code is None else code, State.SYSTEM_ERROR)
    cause = (pod and _pod_failure(pod)) or "the task pod ended before the sequencer's verdict"
    logs = [cause] if code is None else []
    return Decision(final, logs, executor_logs=executor_logs(pod), finished=True, trust_report=True)


def progress(objects: Objects, timing: Timing) -> Decision:
    """Return where an admitted task whose pod has not ended stands, and what it waits for."""
    pod, report = objects.pod, objects.report
    notes = image_notes(pod, report) + _pod_notes(pod, timing)
    if podlayout.ready(pod):  # every container runs from the start: the report tells
        ran = report is not None and report.ran
        logs = report.progress() if report is not None else []
        return Decision(State.RUNNING if ran else State.INITIALIZING, notes, logs or None)
    if any(_ran(s) for s in _executors(pod)):
        return Decision(State.RUNNING, notes, executor_logs=executor_logs(pod))
    return Decision(State.INITIALIZING, notes)
