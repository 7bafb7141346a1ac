"""What a task shows between its Job and a running pod, on recorded object shapes (issue 9).

Every fixture is an object as the named Kubernetes or Kueue version writes it, with only the
fields the decision does not read left out. The message formats are quoted from their sources:

* Kueue v0.19.2 ``pkg/workload/admissionchecks.go``: ``Admitted`` False, reason
  ``UnsatisfiedChecks``, "The workload has not all checks ready", while a check is not Ready;
  ``pkg/controller/admissionchecks/provisioning/controller.go``: a ProvisioningRequest check
  copies the autoscaler's ``Provisioned`` message while Pending, and clears it before the
  autoscaler has said anything; ``pkg/controller/core/workload_controller.go`` and
  ``pkg/workload/evict/evict.go``: a Rejected check deactivates the Workload, the eviction
  reason is ``DeactivatedDueToAdmissionCheck`` and its message "The workload is deactivated due
  to AdmissionCheck in Rejected state: "<name>" (<message>)".
* Kubernetes (``pkg/controller/controller_utils.go``, the Job controller's pod control): a pod
  the API server refuses becomes a Warning Event, reason ``FailedCreate``, source
  ``job-controller``, message "Error creating: <the API server's message>"; the event recorder
  aggregates repeats (``count``, ``lastTimestamp``) and, past ten similar ones, prefixes
  "(combined from similar events): ". The API server's messages: Pod Security admission
  ("pods "<name>" is forbidden: violates PodSecurity "<level>:<version>": hostPath volumes
  (volume "<name>")"), the ResourceQuota plugin ("exceeded quota: <quota>, requested: ...,
  used: ..., limited: ..."), LimitRanger ("maximum <resource> usage per Container is <max>, but
  limit is <limit>"), a validating webhook ("admission webhook "<name>" denied the request:
  ..."), a webhook that cannot be called ("Internal error occurred: failed calling webhook ...").
* Kueue v0.15 to v0.19 (``pkg/controller/jobframework/reconciler.go``): a Job whose
  WorkloadPriorityClass does not exist gets no Workload and no Event at all.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.models import State
from worker import admission, states
from worker.states import Objects, Timing

Json = dict[str, Any]
NS = "kueue-tes-tasks"
TASK = "01jzq7r5v8k3m2n4p6s8t0w2y4"
JOB = f"tes-{TASK}"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ADMITTED = "2026-01-01T00:00:10Z"


def job(suspend: bool = False, **annotations: str) -> Json:
    """The task's Job as the API server returns it once Kueue unsuspended it."""
    meta: Json = {
        "name": JOB,
        "namespace": NS,
        "uid": "5a0b6f0e-3c1d-4e2f-8a9b-0c1d2e3f4a5b",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {
            "app.kubernetes.io/managed-by": "kueue-tes",
            "kueue-tes/task-id": TASK,
            "kueue.x-k8s.io/queue-name": "tes",
        },
        "annotations": dict(annotations),
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"suspend": suspend, "backoffLimit": 0}, "status": {}}  # fmt: skip


def condition(kind: str, status: str, reason: str, message: str, at: str = ADMITTED) -> Json:
    """A metav1.Condition as Kueue writes it."""
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": at, "observedGeneration": 1}  # fmt: skip


def workload(conditions: list[Json], checks: list[Json] | None = None) -> Json:
    """A kueue.x-k8s.io/v1beta2 Workload of the Job."""
    status: Json = {"conditions": conditions}
    if checks is not None:
        status["admissionChecks"] = checks
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {"name": f"job-{JOB}-7c2f1", "namespace": NS,
                     "labels": {"kueue.x-k8s.io/job-uid": "5a0b6f0e-3c1d-4e2f-8a9b-0c1d2e3f4a5b"}},
        "spec": {"queueName": "tes", "active": True},
        "status": status,
    }  # fmt: skip


RESERVED = condition("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue tes")
ADMITTED_TRUE = condition("Admitted", "True", "Admitted", "The workload is admitted")


def check(name: str, state: str, message: str) -> Json:
    """One entry of status.admissionChecks (v1beta2 AdmissionCheckState)."""
    return {"name": name, "state": state, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:06Z"}  # fmt: skip


# -- item 6: admission checks -------------------------------------------------------------------

DWS = (
    "Waiting for resources. Currently there are not enough resources available to fulfill the "
    "request."
)


def test_each_pending_admission_check_says_what_it_waits_for() -> None:
    """Instead of 'has not all checks ready': each check that is not Ready, with its message."""
    waiting = workload(
        [RESERVED, condition("Admitted", "False", "UnsatisfiedChecks",
                             "The workload has not all checks ready")],
        [check("dws-prov", "Pending", DWS),
         check("multikueue", "Ready", 'The workload was admitted on "worker-eu"'),
         check("capacity", "Pending", "")],
    )  # fmt: skip
    decision = states.decide(State.QUEUED, Objects(job=job(suspend=True), workload=waiting))
    assert decision.state is State.QUEUED
    assert decision.system_logs == [
        f"waiting for Kueue: admission check dws-prov is Pending: {DWS}; "
        "admission check capacity is Pending"
    ]


def test_without_listed_checks_kueues_own_message_stays() -> None:
    """A Workload that lists no checks keeps Kueue's condition message."""
    waiting = workload(
        [RESERVED, condition("Admitted", "False", "UnsatisfiedChecks",
                             "The workload has not all checks ready")],
    )  # fmt: skip
    decision = states.decide(State.QUEUED, Objects(job=job(suspend=True), workload=waiting))
    assert decision.system_logs == ["waiting for Kueue: The workload has not all checks ready"]


def test_a_rejected_check_ends_the_task_naming_the_check() -> None:
    """Kueue deactivates a Workload whose check is Rejected: SYSTEM_ERROR with the check's word."""
    message = (
        'The workload is deactivated due to AdmissionCheck in Rejected state: "dws-prov" '
        "(Provisioning Request was rejected: quota exceeded for nvidia-h100)"
    )
    rejected = workload(
        [condition("Evicted", "True", "DeactivatedDueToAdmissionCheck", message),
         condition("QuotaReserved", "False", "Inactive", "The workload is deactivated")],
        [check("dws-prov", "Rejected",
               "Provisioning Request was rejected: quota exceeded for nvidia-h100")],
    )  # fmt: skip
    decision = states.decide(State.QUEUED, Objects(job=job(suspend=True), workload=rejected))
    assert decision.state is State.SYSTEM_ERROR and decision.finished
    assert decision.system_logs == [
        "Kueue stopped the task: an admission check rejected it "
        f"(DeactivatedDueToAdmissionCheck: {message})"
    ]


# -- item 4: the pod refused ----------------------------------------------------------------------


def failed_create(message: str, first: str, last: str, count: int = 1) -> Json:
    """The Job controller's Warning Event about a pod the API server refused (core/v1)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{JOB}.18a6b2c3d4e5f607", "namespace": NS},
        "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": JOB,
                           "namespace": NS, "uid": "5a0b6f0e-3c1d-4e2f-8a9b-0c1d2e3f4a5b",
                           "resourceVersion": "48213"},
        "reason": "FailedCreate",
        "message": f"Error creating: {message}",
        "source": {"component": "job-controller"},
        "firstTimestamp": first,
        "lastTimestamp": last,
        "count": count,
        "type": "Warning",
        "eventTime": None,
        "reportingComponent": "job-controller",
        "reportingInstance": "",
    }  # fmt: skip


PSA = (
    f'pods "{JOB}-x7k2p" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes '
    '(volumes "root-0", "root-1")'
)
QUOTA = (
    f'pods "{JOB}-" is forbidden: exceeded quota: tasks, requested: requests.cpu=1100m, '
    "used: requests.cpu=7500m, limited: requests.cpu=8"
)
LIMIT = (
    f'pods "{JOB}-q4w9z" is forbidden: maximum memory usage per Container is 4Gi, but limit is 8Gi'
)
#: LimitRanger's minConstraint and limitRequestRatioConstraint; several violations are joined
#: by apimachinery's error aggregate (duplicates dropped, "[a, b]"). The ready layout's `finish`
#: and executors after the first request "0" of cpu and memory (worker/jobspec.py).
LIMIT_MIN = (
    f'pods "{JOB}-q4w9z" is forbidden: [minimum cpu usage per Container is 100m, but request is '
    "0, minimum memory usage per Container is 64Mi, but request is 0]"
)
LIMIT_RATIO = (
    f'pods "{JOB}-q4w9z" is forbidden: memory max limit to request ratio per Container is 2, but '
    "no request is specified or request is 0"
)
WEBHOOK = (
    'admission webhook "validation.gatekeeper.sh" denied the request: [no-host-paths] '
    "hostPath volumes are not allowed"
)
UNREACHABLE = (
    'Internal error occurred: failed calling webhook "pods.policy.example.org": failed to call '
    'webhook: Post "https://policy.example-system.svc:443/validate?timeout=10s": dial tcp '
    "10.96.12.7:443: connect: connection refused"
)
ADMITTED_WL = workload([RESERVED, ADMITTED_TRUE])


def refused(message: str) -> Objects:
    """An admitted task whose Job has no pod, only the Job controller's refusals (00:00:11-41)."""
    event = failed_create(message, "2026-01-01T00:00:11Z", "2026-01-01T00:00:41Z", 6)
    return Objects(job=job(), workload=ADMITTED_WL, events=(event,))


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        (PSA, "Pod Security level (pod-security.kubernetes.io/enforce) forbids the pod; hostPath "
              "volumes come from KUEUE_TES_FILE_ROOTS"),
        (WEBHOOK, "an admission webhook refused the pod"),
        (LIMIT, "a LimitRange of the task namespace refuses the pod's requests or limits"),
    ],
)  # fmt: skip
def test_a_pod_the_api_server_forbids_ends_the_task_with_its_message(
    message: str, hint: str
) -> None:
    """Pod Security, a webhook's denial, a LimitRange: no retry helps, SYSTEM_ERROR at once."""
    decision = states.decide(State.INITIALIZING, refused(message), Timing(T0 + 60))
    assert decision.state is State.SYSTEM_ERROR and decision.finished
    [line] = decision.system_logs
    assert line.startswith(f"the cluster refused to create the task pod: {message}; ")
    assert hint in line


@pytest.mark.parametrize("message", [LIMIT_MIN, LIMIT_RATIO])
def test_a_limit_range_that_refuses_zero_requests_names_the_pod_layout(message: str) -> None:
    """A per-Container minimum or limit-to-request ratio refuses what waits for its turn in the
    ready layout (no request of its own): the operator's fix, not "ask for more"."""
    decision = states.decide(State.INITIALIZING, refused(message), Timing(T0 + 60))
    assert decision.state is State.SYSTEM_ERROR and decision.finished
    [line] = decision.system_logs
    assert line == (
        f"the cluster refused to create the task pod: {message}; in the ready pod layout "
        "(docs/task-pod.md) finish and the executors after the first request no cpu or memory "
        "of their own (they wait for their turn), which a LimitRange of the task namespace "
        "refuses (a per-Container min or maxLimitRequestRatio); the operator can drop those "
        "from it, or set KUEUE_TES_POD_LAYOUT=init, where every container requests the task's "
        "resources or KUEUE_TES_SIDECAR_CPU and KUEUE_TES_SIDECAR_MEMORY"
    )
    assert "ask for resources" not in line
    # A request that is not zero is the generic LimitRange case.
    other = LIMIT_RATIO.replace("no request is specified or request is 0", "request is 0.5")
    assert "ready pod layout" not in admission.explain(admission.Refusal(other, True, None))


def test_aggregated_refusals_read_the_same() -> None:
    """Past ten similar Events the recorder prefixes the message; the API server's text stays."""
    event = failed_create(PSA, "2026-01-01T00:00:11Z", "2026-01-01T00:09:00Z", 14)
    event["message"] = f"(combined from similar events): Error creating: {PSA}"
    objects = Objects(job=job(), workload=ADMITTED_WL, events=(event,))
    [line] = states.decide(State.INITIALIZING, objects, Timing(T0 + 600)).system_logs
    assert line.startswith(f"the cluster refused to create the task pod: {PSA}; ")


@pytest.mark.parametrize("message", [QUOTA, UNREACHABLE])
def test_a_refusal_that_can_pass_waits_then_fails_after_the_grace(message: str) -> None:
    """A used-up ResourceQuota: the message while it waits, SYSTEM_ERROR after the grace."""
    objects = refused(message)
    timing = Timing(T0 + 300, pod_create_grace=600)
    waiting = states.decide(State.INITIALIZING, objects, timing)
    assert waiting.state is State.INITIALIZING and not waiting.finished
    [line] = waiting.system_logs
    assert line.startswith(f"waiting for the task pod: the cluster refuses to create it: {message}")
    assert line.endswith("; the task fails after 600 s")
    if message is QUOTA:
        assert "a ResourceQuota of the task namespace is used up" in line
    assert states.POD_REFUSED in states.waits(objects)
    # The grace counts from the first refusal of this admission (00:00:11), not from now.
    late = states.decide(State.INITIALIZING, objects, Timing(T0 + 612, pod_create_grace=600))
    assert late.state is State.SYSTEM_ERROR and late.finished
    [line] = late.system_logs
    assert line.startswith(f"the cluster refused to create the task pod for 600 s: {message}")


def test_a_refusal_is_over_once_the_pod_exists_or_before_this_admission() -> None:
    """A pod created after the refusals, or refusals of an earlier admission, change nothing."""
    pod = {"metadata": {"name": f"{JOB}-m3n8d", "creationTimestamp": "2026-01-01T00:01:02Z"},
           "status": {"phase": "Pending"}}  # fmt: skip
    objects = refused(QUOTA)
    created = Objects(job=objects.job, workload=ADMITTED_WL, pod=pod, events=objects.events)
    assert states.decide(State.INITIALIZING, created, Timing(T0 + 900)).state is State.INITIALIZING
    assert states.POD_REFUSED not in states.waits(created)
    # Re-admitted at 00:20:00: the Event (last seen 00:00:41) was about the earlier attempt.
    again = copy.deepcopy(ADMITTED_WL)
    for cond in again["status"]["conditions"]:
        cond["lastTransitionTime"] = "2026-01-01T00:20:00Z"
    later = Objects(job=job(), workload=again, events=objects.events)
    decision = states.decide(State.INITIALIZING, later, Timing(T0 + 1300))
    assert decision.state is State.INITIALIZING and decision.system_logs == []


def test_the_waiting_line_follows_the_refusal() -> None:
    """The quota numbers change as pods come and go: one line, replaced, says the latest."""
    first = states.decide(State.INITIALIZING, refused(QUOTA), Timing(T0 + 60)).system_logs
    later = QUOTA.replace("used: requests.cpu=7500m", "used: requests.cpu=7900m")
    second = states.decide(State.INITIALIZING, refused(later), Timing(T0 + 90)).system_logs
    merged = states.merge_logs(["submitted to LocalQueue tes", *first], second)
    assert merged == ["submitted to LocalQueue tes", *second]


# -- item 3: a WorkloadPriorityClass that does not exist -------------------------------------------


def test_no_workload_for_an_unchecked_priority_class_ends_the_task_after_the_grace() -> None:
    """Kueue v0.15-v0.19: no Workload, no Event. After the grace: SYSTEM_ERROR naming the class."""
    asked = job(suspend=True)
    asked["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = "urgent"
    early = states.decide(State.QUEUED, Objects(job=asked), Timing(T0 + 60, no_workload_grace=120))
    assert early.state is State.QUEUED and early.system_logs == []
    late = states.decide(State.QUEUED, Objects(job=asked), Timing(T0 + 121, no_workload_grace=120))
    assert late.state is State.SYSTEM_ERROR and late.finished
    assert late.system_logs == [
        f"Kueue has created no Workload for Job {JOB} in 120 s: the task asks for "
        "WorkloadPriorityClass urgent, and Kueue creates no Workload (and, up to v0.19, reports "
        "nothing) when that class does not exist; ask for an existing one "
        "(backend_parameters.priority_class) or for it to be created. If it exists, the "
        f"operator should check that Kueue manages namespace {NS}"
    ]


def test_a_class_the_worker_found_points_at_the_namespace_instead() -> None:
    """The worker saw the class exist at submission: it waits, and the note names the namespace."""
    asked = job(suspend=True, **{admission.PRIORITY_CHECKED: "urgent"})
    asked["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = "urgent"
    late = states.decide(State.QUEUED, Objects(job=asked), Timing(T0 + 121, no_workload_grace=120))
    assert late.state is State.QUEUED and not late.finished
    [line] = late.system_logs
    assert line.startswith(f"Kueue has created no Workload for Job {JOB} in 120 s, so it does not")
    assert f"that Kueue manages namespace {NS} (managedJobsNamespaceSelector)" in line


def test_kueue_main_reports_the_missing_class_in_an_event() -> None:
    """Kueue's main branch (after #13775) records the Warning at once: SYSTEM_ERROR at once."""
    asked = job(suspend=True)
    asked["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = "urgent"
    event = {"kind": "Event", "type": "Warning", "reason": "WorkloadPriorityClassNotFound",
             "message": 'WorkloadPriorityClass "urgent" not found',
             "involvedObject": {"kind": "Job", "name": JOB, "namespace": NS}}  # fmt: skip
    decision = states.decide(State.QUEUED, Objects(job=asked, events=(event,)), Timing(T0 + 5))
    assert decision.state is State.SYSTEM_ERROR
    assert decision.system_logs == [
        "Kueue cannot queue the task: WorkloadPriorityClass urgent does not exist; ask for an "
        "existing one (backend_parameters.priority_class) or for it to be created"
    ]
