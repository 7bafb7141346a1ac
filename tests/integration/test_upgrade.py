"""Upgrading a store made before stored views: the watcher's sweep renders its tasks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.models import State
from tests.integration.test_store_contract import assert_views_fresh, old_store, rich_record
from worker.cluster.base import Observation
from worker.watcher import Watcher


class Quiet:
    """A cluster where every task's Job exists and nothing happens."""

    def exists(self, task_id: str) -> bool:
        return True

    def snapshot(self) -> list[Observation]:
        return []

    def watch(self, timeout: float) -> Iterator[Observation]:
        return iter(())

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the sweep should not call cluster.{name}")


@pytest.mark.parametrize("kind", ["sqlite", "mongo"])
def test_the_sweep_renders_the_tasks_of_an_older_release(kind: str, tmp_path: Path) -> None:
    records = [rich_record(notes=["n"]) for _ in range(7)]
    records[0].state = State.RUNNING
    store = old_store(kind, tmp_path, records)
    watcher = Watcher(store, Quiet(), resubmit=lambda task_id: None, grace_seconds=60)
    watcher.sweep()
    assert store.render_pending() == 0  # the sweep left nothing to render
    for rec in records:
        assert_views_fresh(store, rec.id)
    store.close()
