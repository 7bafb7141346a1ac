"""`task wait`: poll tasks (MINIMAL view) with backoff until all are final; say what changed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from app.client import display
from app.client.connection import ClientError, Connection

#: Seconds between polls: the first, the growth while nothing changes, and the default bound.
FIRST_INTERVAL, GROWTH, MAX_INTERVAL = 0.2, 1.5, 5.0
#: Requests in flight at once when many tasks are waited for.
CONCURRENCY = 16
_CLEAR = "\r\x1b[K"


class Waiter:
    """Follows a set of tasks until every one is in a final state."""

    def __init__(
        self,
        connection: Connection,
        task_ids: Sequence[str],
        out: TextIO,
        err: TextIO,
        max_interval: float = MAX_INTERVAL,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wait for ``task_ids`` (duplicates count once); print to ``out`` and ``err``."""
        self.connection = connection
        self.task_ids = list(dict.fromkeys(task_ids))
        self.out, self.err = out, err
        self.max_interval = max(max_interval, FIRST_INTERVAL)
        self.timeout = timeout
        self.clock = clock
        self.states: dict[str, str] = {}
        self._live = err.isatty()  # on a terminal the progress line is rewritten in place
        self._shown = False

    def run(self) -> int:
        """Poll until all tasks are final; return 0, 1 (EXECUTOR_ERROR) or 2 (worse).

        Errors of the first round (an unreachable server, a 401, an unknown id) end the wait;
        later, answers that say "retry" (no connection, 502/503/504) are waited out.
        """
        start = self.clock()
        pending, interval, first, outage = list(self.task_ids), FIRST_INTERVAL, True, False
        workers = max(1, min(CONCURRENCY, len(pending)))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="kueue-tes-wait")
        try:
            while pending:
                try:
                    seen = self._poll(pool, pending)
                except ClientError as exc:
                    if first or not exc.transient:
                        raise
                    if not outage:
                        self._note(f"{exc}; retrying")
                    outage = True
                    interval = self._pause(start, interval, grow=True)
                    continue
                if outage:
                    self._note(f"{self.connection.server} answers again")
                    outage = False
                changed = self._record(pending, seen)
                pending = [i for i in pending if self.states[i] not in display.FINAL]
                if changed or self._live:
                    self._progress(start, final=not pending)
                first = False
                if pending:
                    interval = self._pause(start, interval, grow=not changed)
            self._explain(pool)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return display.wait_status(self.states.values())

    def _poll(self, pool: ThreadPoolExecutor, pending: list[str]) -> dict[str, str]:
        def state(task_id: str) -> str:
            return str(self.connection.get_task(task_id, "MINIMAL").get("state", "UNKNOWN"))

        return dict(zip(pending, pool.map(state, pending), strict=True))

    def _record(self, pending: list[str], seen: dict[str, str]) -> bool:
        changed = False
        clock = time.strftime("%H:%M:%S")
        for task_id in pending:
            if seen[task_id] != self.states.get(task_id):
                self.states[task_id] = seen[task_id]
                self._clear()
                print(display.state_line(clock, task_id, seen[task_id]), file=self.out, flush=True)
                changed = True
        return changed

    def _pause(self, start: float, interval: float, grow: bool) -> float:
        """Sleep before the next poll (longer while nothing changes); give up at the timeout."""
        interval = min(interval * GROWTH, self.max_interval) if grow else FIRST_INTERVAL
        if self.timeout is not None:
            left = self.timeout - (self.clock() - start)
            if left <= 0:
                unfinished = [i for i in self.task_ids if self.states.get(i) not in display.FINAL]
                shown = " ".join(unfinished[:5]) + (" ..." if len(unfinished) > 5 else "")
                raise ClientError(
                    f"gave up after {self.timeout:g} s (--timeout): {len(unfinished)} of "
                    f"{len(self.task_ids)} tasks not finished: {shown}"
                )
            interval = min(interval, left)
        time.sleep(interval)
        return interval

    def _progress(self, start: float, final: bool) -> None:
        line = display.progress_line(self.states, self.clock() - start)
        if self._live:
            self.err.write(_CLEAR + line + ("\n" if final else ""))
            self._shown = not final
        else:
            self.err.write(line + "\n")
        self.err.flush()

    def _note(self, line: str) -> None:
        self._clear()
        print(line, file=self.err, flush=True)

    def _clear(self) -> None:
        if self._shown:
            self.err.write(_CLEAR)
            self._shown = False

    def _explain(self, pool: ThreadPoolExecutor) -> None:
        """Print, for each task that did not complete, one line saying why."""
        failed = [i for i in self.task_ids if self.states[i] not in ("COMPLETE", "CANCELED")]

        def reason(task_id: str) -> str:
            try:
                return display.failure_reason(self.connection.get_task(task_id, "FULL"))
            except ClientError as exc:
                return f"(its logs could not be read: {exc})"

        for task_id, why in zip(failed, pool.map(reason, failed), strict=True):
            print(f"{task_id} {self.states[task_id]}: {why}", file=self.err, flush=True)
