"""worker/pods.py: which of a task's live pods the current attempt is about (issue 9, item 5)."""

from __future__ import annotations

from typing import Any

from worker import pods

Json = dict[str, Any]


def pod(name: str, created: str, phase: str = "Running", deleting: bool = False) -> Json:
    """A task pod as the API server lists it (only what the choice reads)."""
    meta: Json = {"name": name, "uid": f"uid-{name}", "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:10:30Z"
    return {"metadata": meta, "status": {"phase": phase}}


OLD = pod("tes-t-aaaaa", "2026-01-01T00:00:00Z", deleting=True)
NEW = pod("tes-t-bbbbb", "2026-01-01T00:10:05Z", phase="Pending")


def test_pods_are_kept_by_uid_and_deleted_by_name() -> None:
    """An ADDED and a MODIFIED of the same uid are one pod; a DELETED names the pod only."""
    live = pods.seen({}, "tes-t-aaaaa", OLD)
    live = pods.seen(live, "tes-t-bbbbb", NEW)
    live = pods.seen(live, "tes-t-bbbbb", {**NEW, "status": {"phase": "Running"}})
    assert sorted(live) == ["uid-tes-t-aaaaa", "uid-tes-t-bbbbb"]
    assert live["uid-tes-t-bbbbb"]["status"]["phase"] == "Running"
    assert list(pods.seen(live, "tes-t-aaaaa", None)) == ["uid-tes-t-bbbbb"]


def test_an_active_pod_wins_over_a_terminating_one_whatever_the_order() -> None:
    """The new pod counts even when the old one was reported after it."""
    assert pods.current({"b": NEW, "a": OLD}) is NEW
    assert pods.current({"a": OLD, "b": NEW}) is NEW


def test_pods_of_ended_attempts_never_count() -> None:
    """An evicted attempt's pod is not the task's, even when it is the only one left."""
    assert pods.current({"a": OLD}, None, {"tes-t-aaaaa"}) is None
    assert pods.current({"a": OLD, "b": NEW}, "tes-t-aaaaa", {"tes-t-aaaaa"}) is NEW


def test_the_attempts_own_pod_while_it_runs_else_the_newest() -> None:
    """Two active pods: the attempt's own; once everything ended: its own, else the newest."""
    other = pod("tes-t-ccccc", "2026-01-01T00:20:00Z")
    assert pods.current({"b": NEW, "c": other}, "tes-t-bbbbb") is NEW
    assert pods.current({"b": NEW, "c": other}) is other
    done = pod("tes-t-ddddd", "2026-01-01T00:30:00Z", phase="Succeeded")
    failed = pod("tes-t-eeeee", "2026-01-01T00:40:00Z", phase="Failed")
    assert pods.current({"d": done, "e": failed}, "tes-t-ddddd") is done
    assert pods.current({"d": done, "e": failed}) is failed
    assert pods.current({}) is None
