"""The Prometheus metrics of every kueue-tes process; docs/operations.md describes each once.

Label values are bounded: operation names from the spec, status codes, TES states, LocalQueue
names (the operator's), and Kueue's eviction reasons folded into a fixed set. Never a task id or
a principal.

The API (``kueue-tes api``) runs several gunicorn workers: ``app.cli`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any worker imports this module, each
worker writes its values there, and a scrape of any worker sums them (:func:`exposition`). The
worker and the watcher are single processes and serve their own port (:func:`serve`);
``kueue-tes serve`` runs everything in one process and shows all of it on the API's /metrics.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.models import State

log = logging.getLogger(__name__)

#: The environment variable that puts prometheus_client in multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_MINUTE, _HOUR, _DAY = 60.0, 3600.0, 86400.0
#: Waits for quota range from instant to days; what batch admins read is the upper half.
WAIT_BUCKETS = (1, 5, 15, 30, _MINUTE, 2 * _MINUTE, 5 * _MINUTE, 10 * _MINUTE, 30 * _MINUTE,
                _HOUR, 2 * _HOUR, 6 * _HOUR, 12 * _HOUR, _DAY, 2 * _DAY, 7 * _DAY)  # fmt: skip
RUN_BUCKETS = (1, 5, 15, 30, _MINUTE, 5 * _MINUTE, 15 * _MINUTE, 30 * _MINUTE, _HOUR, 2 * _HOUR,
               6 * _HOUR, 12 * _HOUR, _DAY, 2 * _DAY, 7 * _DAY)  # fmt: skip
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

#: Kueue's eviction reasons (kueue.x-k8s.io/v1beta2 WorkloadEvictedBy…) and our own
#: ``PodReplaced`` (a new pod seen while the old one's end was not); anything else is "Other".
EVICTION_REASONS = frozenset(
    {
        "Preempted",
        "PodsReadyTimeout",
        "AdmissionCheck",
        "ClusterQueueStopped",
        "LocalQueueStopped",
        "NodeFailures",
        "EvictedOnManagerCluster",
        "PodReplaced",
    }
)
#: Why a submission failed: the task cannot become a pod, the cluster refused its Job for good,
#: or the cluster still failed after the job's own retries (the watcher's sweep submits again).
SUBMISSION_FAILURES = ("invalid_task", "refused", "transient")

API_REQUESTS = Counter(
    "kueue_tes_api_requests_total",
    "API requests answered, by operation (the spec's operationId) and HTTP status code.",
    ["operation", "code"],
)
API_LATENCY = Histogram(
    "kueue_tes_api_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by operation.",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "kueue_tes_task_queue_wait_seconds",
    "Time a task waited for Kueue's admission: from creation (or its last eviction) until "
    "Kueue admitted it, by LocalQueue.",
    ["queue"],
    buckets=WAIT_BUCKETS,
)
RUN_TIME = Histogram(
    "kueue_tes_task_run_seconds",
    "Time from a task's last admission to its end, by LocalQueue and final state.",
    ["queue", "state"],
    buckets=RUN_BUCKETS,
)
SUBMISSIONS = Counter(
    "kueue_tes_submissions_total",
    "Tasks the worker submitted to the cluster as suspended Jobs, by LocalQueue.",
    ["queue"],
)
SUBMISSION_FAILED = Counter(
    "kueue_tes_submission_failures_total",
    "Submissions that failed, by reason: invalid_task and refused end the task in "
    "SYSTEM_ERROR, transient is retried.",
    ["reason"],
)
EVICTIONS = Counter(
    "kueue_tes_task_evictions_total",
    "Attempts ended by an eviction, after which the task waits to be admitted again, by "
    "LocalQueue and Kueue's reason.",
    ["queue", "reason"],
)


class RequestTally:
    """API request counts and latencies, gathered in plain Python and added to
    ``kueue_tes_api_requests_total`` and ``kueue_tes_api_request_duration_seconds`` in batches
    (:meth:`flush`): in multiprocess mode each write to a metric is a write to a shared file,
    about a microsecond, and a request would otherwise make three (docs/performance.md).

    Not thread-safe: one event loop adds and flushes.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._bounds = [float(bound) for bound in LATENCY_BUCKETS]
        self._counts: dict[tuple[str, int], int] = {}
        self._seconds: dict[str, list[float]] = {}

    def add(self, operation: str, status: int, seconds: float) -> None:
        """Count one request."""
        key = (operation, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        seen = self._seconds.get(operation)
        if seen is None:
            self._seconds[operation] = [seconds]
        else:
            seen.append(seconds)

    def flush(self) -> bool:
        """Add what was counted since the last flush to the metrics; False if nothing was."""
        counts, self._counts = self._counts, {}
        latencies, self._seconds = self._seconds, {}
        for (operation, status), n in counts.items():
            API_REQUESTS.labels(operation, str(status)).inc(n)
        for operation, seconds in latencies.items():
            per_bucket = [0] * (len(self._bounds) + 1)  # +Inf last
            for each in seconds:
                per_bucket[bisect.bisect_left(self._bounds, each)] += 1  # first bound >= it
            child = API_LATENCY.labels(operation)
            # A batch of observations: prometheus_client has no public call for one.
            for bucket, seen in zip(child._buckets, per_bucket, strict=True):
                if seen:
                    bucket.inc(seen)
            child._sum.inc(sum(seconds))
        return bool(counts)


def eviction_reason(reason: str | None) -> str:
    """Return ``reason`` if it is one of :data:`EVICTION_REASONS`, else "Other"."""
    return reason if reason in EVICTION_REASONS else "Other"


class TaskCounts(Collector):
    """``kueue_tes_tasks``: tasks by state and LocalQueue, read from the store at each scrape.

    Every state of every queue that has held a task is reported, zero included, so that a
    series does not vanish when its last task moves on.
    """

    def __init__(self, counts: Callable[[], dict[tuple[str, State], int]]) -> None:
        """Read the counts with ``counts`` (a store's ``counts``)."""
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        """Yield the gauge; nothing when the store cannot be read (logged)."""
        family = GaugeMetricFamily(
            "kueue_tes_tasks", "Tasks by TES state and LocalQueue.", labels=["state", "queue"]
        )
        try:
            counts = self._counts()
        except Exception as exc:  # a scrape must not fail because the store is away
            log.warning("metrics: cannot count tasks: %s", exc)
            return
        for queue in sorted({queue for queue, _ in counts}):
            for state in State:
                if state is not State.UNKNOWN:
                    family.add_metric([state.value, queue], counts.get((queue, state), 0))
        yield family


class WatcherLag(Collector):
    """``kueue_tes_watcher_lag_seconds``: now minus the newest observation the watcher applied.

    A watcher that has applied everything the cluster reported (its watch came back with no
    more) counts as up to date at that moment, so an idle cluster shows no lag.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """Start as up to date now."""
        self.clock = clock
        self.newest = clock()

    def applied(self) -> None:
        """Note that an observation was applied (or that none is pending) just now."""
        self.newest = self.clock()

    def collect(self) -> Iterable[Metric]:
        """Yield the gauge."""
        yield GaugeMetricFamily(
            "kueue_tes_watcher_lag_seconds",
            "Seconds since the watcher last applied an observation or found none pending.",
            value=max(0.0, self.clock() - self.newest),
        )


_lag: WatcherLag | None = None
_lag_lock = threading.Lock()


def watcher_lag() -> WatcherLag:
    """Return this process's watcher lag, registered for scrapes the first time it is asked."""
    global _lag
    with _lag_lock:
        if _lag is None:
            _lag = WatcherLag()
            REGISTRY.register(_lag)
        return _lag


def exposition(extra: CollectorRegistry | None = None) -> bytes:
    """Return this process's metrics (all workers' in multiprocess mode) and ``extra``'s."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    return text + (generate_latest(extra) if extra is not None else b"")


def mark_dead(pid: int) -> None:
    """Forget a gunicorn worker's live gauges (its counters and histograms stay counted)."""
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve(host: str, port: int) -> bool:
    """Serve /metrics on ``host:port`` in a thread (worker and watcher); False if it cannot."""
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        # Metrics must never stop the work: say so loudly and go on without them.
        log.error(
            "metrics: cannot listen on %s:%d (%s); set KUEUE_TES_METRICS_PORT", host, port, exc
        )
        return False
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True
