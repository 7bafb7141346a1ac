"""Real tasks on a real Kueue-managed cluster: success with S3 outputs, an executor error, cancel,
a quota wait with Kueue's reason, preemption by a higher priority class, and a priority class
that does not exist.

Every task goes to the LocalQueue `e2e` (tests/e2e/manifests): 2 cpu, no cohort, preemption of
lower priorities. A task of 1 cpu takes 1.1 of it (our sidecars), so a second one waits.
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e import cluster
from tests.e2e.cluster import TASK_NS, Json, Tes, system_logs

pytestmark = pytest.mark.timeout(1800)

IMAGE = "busybox:1.36"


def task(name: str, command: list[str], priority: str | None = None, **extra: Json) -> Json:
    """Return a one-executor task of 1 cpu on the e2e queue."""
    params = {"queue": "e2e"}
    if priority:
        params["priority_class"] = priority
    return {
        "name": f"e2e-{name}",
        "tags": {"suite": "e2e"},
        "executors": [{"image": IMAGE, "command": command}],
        "resources": {"cpu_cores": 1, "ram_gb": 0.25, "backend_parameters": params},
        **extra,
    }


def running(t: Json) -> bool:
    """The first executor has started."""
    return t["state"] == "RUNNING"


def job_gone(task_id: str) -> None:
    """Wait until the watcher has deleted the task's Job (after storing its final state)."""
    cluster.retry(
        f"Job tes-{task_id} deleted",
        lambda: _assert(not cluster.exists("job", f"tes-{task_id}", TASK_NS)),
        timeout=cluster.TIMEOUT,
    )


def _assert(condition: bool) -> None:
    if not condition:
        raise AssertionError("not yet")


def test_service_info_says_tes_1_1(tes: Tes) -> None:
    """The installed API answers service-info as TES 1.1, with the dev S3 storage."""
    info = tes.service_info()
    assert info["type"]["artifact"] == "tes" and info["type"]["version"].startswith("1.1")
    assert any(prefix.startswith("s3://tes") for prefix in info.get("storage", ()))


def test_task_completes_with_outputs_in_s3(tasks: Tes) -> None:
    """The s3-roundtrip example: inline input, two executors, outputs uploaded; COMPLETE with
    executor logs; the files are in the bucket; the Job is cleaned up."""
    body = cluster.example("s3-roundtrip.json")
    prefix = f"e2e/{uuid.uuid4().hex}"
    for output in body["outputs"]:
        output["url"] = f"s3://tes/{prefix}/{output['path'].rsplit('/', 1)[-1]}"
    body["resources"]["backend_parameters"] = {"queue": "e2e"}
    task_id = tasks.create(body)
    done = tasks.finish(task_id)
    assert done["state"] == "COMPLETE", cluster.diagnose(task_id)
    (attempt,) = done["logs"]
    assert [log["exit_code"] for log in attempt["logs"]] == [0, 0]
    assert attempt["start_time"] and attempt["end_time"]
    urls = {output["url"] for output in attempt["outputs"]}
    assert urls == {f"s3://tes/{prefix}/shout.txt", f"s3://tes/{prefix}/count.txt"}
    assert cluster.s3_read(f"{prefix}/shout.txt") == "HELLO FROM KUEUE-TES\n"
    assert cluster.s3_read(f"{prefix}/count.txt").split()[0] == "21"
    job_gone(task_id)


def test_executor_error_keeps_exit_code_and_stderr(tasks: Tes) -> None:
    """A command that exits 3 ends the task in EXECUTOR_ERROR with its exit code and stderr."""
    task_id = tasks.create(task("fail", ["sh", "-c", "echo going wrong >&2; exit 3"]))
    done = tasks.finish(task_id)
    assert done["state"] == "EXECUTOR_ERROR", cluster.diagnose(task_id)
    executor = done["logs"][-1]["logs"][0]
    assert executor["exit_code"] == 3
    assert "going wrong" in executor.get("stderr", "")
    job_gone(task_id)


def test_cancel_stops_a_running_task(tasks: Tes) -> None:
    """Cancel moves a running task to CANCELING at once and to CANCELED when its pod is gone."""
    task_id = tasks.create(task("cancel", ["sleep", "600"]))
    tasks.wait(task_id, running, "RUNNING")
    tasks.cancel(task_id)
    assert tasks.get(task_id, "MINIMAL")["state"] in ("CANCELING", "CANCELED")
    done = tasks.finish(task_id)
    assert done["state"] == "CANCELED"
    job_gone(task_id)


def test_task_waits_for_quota_and_says_why(tasks: Tes) -> None:
    """A task that does not fit beside a running one stays QUEUED with Kueue's reason in its
    system logs, and runs once the quota is free."""
    blocker = tasks.create(task("blocker", ["sleep", "600"], "tes-low"))
    tasks.wait(blocker, running, "RUNNING")
    waiting = tasks.create(task("waiting", ["echo", "my turn"], "tes-low"))
    seen = tasks.wait(
        waiting, lambda t: "quota" in system_logs(t).lower(), "QUEUED with a quota reason"
    )
    assert seen["state"] == "QUEUED", seen
    tasks.cancel(blocker)
    done = tasks.finish(waiting)
    assert done["state"] == "COMPLETE", cluster.diagnose(waiting)
    assert "my turn" in done["logs"][-1]["logs"][0].get("stdout", "")


def test_higher_priority_task_preempts_and_the_victim_runs_again(tasks: Tes) -> None:
    """A tes-high task evicts a running tes-low one; the victim's attempt ends with the reason,
    it goes back to the queue and completes in a second attempt."""
    victim = tasks.create(task("victim", ["sh", "-c", "sleep 30; echo survived"], "tes-low"))
    tasks.wait(victim, running, "RUNNING")
    urgent = tasks.create(task("urgent", ["echo", "urgent"], "tes-high"))
    assert tasks.finish(urgent)["state"] == "COMPLETE", cluster.diagnose(urgent)
    done = tasks.finish(victim)
    assert done["state"] == "COMPLETE", cluster.diagnose(victim)
    assert len(done["logs"]) >= 2, "preemption ends one attempt and re-admission starts another"
    first = "\n".join(done["logs"][0].get("system_logs") or ()).lower()
    assert "preempt" in first or "evict" in first, done["logs"][0]
    assert "survived" in done["logs"][-1]["logs"][0].get("stdout", "")


def test_a_missing_priority_class_fails_the_task_before_its_job_exists(tasks: Tes) -> None:
    """Released Kueue says nothing about a WorkloadPriorityClass that does not exist: the worker
    checks it, and the task ends in SYSTEM_ERROR naming it, with no Job created."""
    task_id = tasks.create(task("no-class", ["true"], "no-such-class"))
    done = tasks.finish(task_id)
    assert done["state"] == "SYSTEM_ERROR", cluster.diagnose(task_id)
    assert "WorkloadPriorityClass no-such-class does not exist" in system_logs(done)
    assert not cluster.exists("job", f"tes-{task_id}", TASK_NS)
