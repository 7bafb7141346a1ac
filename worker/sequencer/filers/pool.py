"""Many transfers at once, bounded, each with its own outcome: the sequencer judges them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from worker.sequencer.filers.base import TransferError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one job gave: its value, or the TransferError that stopped it."""

    value: T | None = None
    error: TransferError | None = None

    @property
    def ok(self) -> bool:
        """Return whether the job finished without an error."""
        return self.error is None


def transfer_all(jobs: Sequence[Callable[[], T]], max_workers: int) -> list[Outcome[T]]:
    """Run ``jobs`` on at most ``max_workers`` threads; return their outcomes in job order."""
    if not jobs:
        return []
    workers = max(1, min(max_workers, len(jobs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="transfer") as pool:
        return list(pool.map(_outcome, jobs))


def _outcome(job: Callable[[], T]) -> Outcome[T]:
    try:
        return Outcome(value=job())
    except TransferError as exc:
        return Outcome(error=exc)
    except Exception as exc:
        # A bug or an unforeseen library error must still end as a readable report,
        # never as a traceback that takes the sequencer down with the other transfers.
        log.exception("transfer failed unexpectedly")
        error = TransferError(f"unexpected {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return Outcome(error=error)
