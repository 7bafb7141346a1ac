"""Run the benchmarks and print their ratios: ``python -m tests.benchmarks [names...]``.

Every figure is compared with a reference measured in the same run on the same machine;
timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from app.settings import Settings
from tests.benchmarks import api, auth, hotpaths, images, metrics, runtime, submit, watcher
from tests.benchmarks.harness import (
    LoadGenerator,
    PythonLoad,
    Row,
    load_generator,
    machine,
    note,
    table,
)

#: Each benchmark's name, title and runner.
BENCHMARKS: dict[str, tuple[str, Callable[[argparse.Namespace, LoadGenerator], list[Row]]]] = {
    "throughput": (
        "Throughput through gunicorn, same server settings for all (best of the rounds)",
        lambda args, gen: api.throughput(gen, args.workers, args.rounds),
    ),
    "list": (
        f"Latency over {api.seed.TASKS:,} stored tasks, one page of {api.PAGE_SIZE}: medians of "
        "sequential requests on one keep-alive connection, each query taking turns with GetTask "
        "MINIMAL, its reference; [n] = matching tasks",
        lambda args, gen: api.listing(args.workers, args.max_seconds),
    ),
    "auth": (
        "Authentication through gunicorn: GetTask MINIMAL with OIDC on against auth off, the "
        "same token on every request (best of the rounds); cost = the time auth adds per request",
        lambda args, gen: auth.gettask(gen, args.workers, args.rounds),
    ),
    "owner-list": (
        f"ListTasks over {api.seed.TASKS:,} stored tasks, two thirds another owner's, one "
        "page: as the owner of the rest (owner filter) against an admin (none); medians of "
        "sequential requests, OIDC on; [n] = tasks on the page",
        lambda args, gen: auth.owner_listing(args.workers),
    ),
    "metrics": (
        "Metrics: GetTask MINIMAL with KUEUE_TES_METRICS on against off through gunicorn (ABBA "
        "rounds) and in process, and one scrape of /metrics over the seeded tasks",
        lambda args, gen: (
            metrics.gettask(gen, args.rounds) + metrics.in_process() + metrics.scrape(args.workers)
        ),
    ),
    "runtime": (
        f"Local runtime through `kueue-tes serve` and its HTTP API: {runtime.EXECUTORS} executors "
        f"running `true` against running `true` directly; trivial tasks per minute (default "
        f"quota: cpu={os.cpu_count()}, the machine's cpu count)",
        lambda args, gen: runtime.runtime(args.runtime_rounds, args.runtime_tasks, args.local_cpu),
    ),
    "fixedcost": (
        "The fixed cost of a task: one `true` executor through `kueue-tes serve` and its HTTP "
        "API (CreateTask -> COMPLETE seen by the client) against the same pod's sandboxes run "
        "by hand, in kubelet's order (medians)",
        lambda args, gen: runtime.fixed_cost(args.runtime_rounds),
    ),
    "images": (
        "Images in the local runtime, from a registry on loopback: per-executor overhead "
        f"({runtime.EXECUTORS} executors running `true`) on a cached image against host-root "
        "mode; a cold pull and unpack of about 100 MB against curl copying the same blobs",
        lambda args, gen: images.images(args.runtime_rounds),
    ),
    "watcher": (
        "Watcher: recorded Job/Pod/Workload observations through states.decide and the SQLite "
        "store's compare-and-set (best of 3), against a bare loop of the same tasks' transitions",
        lambda args, gen: watcher.watcher(args.watcher_tasks),
    ),
    "submit": (
        "Submission: RQ submit jobs (a burst worker) into KubernetesCluster against kmock's "
        "Kubernetes emulator over HTTP, against the same cluster.submit calls in a bare loop "
        "(best of 3)",
        lambda args, gen: submit.submit(args.submit_tasks),
    ),
}
BENCHMARKS["create"] = (
    "CreateTask through gunicorn at the load generator's connections, against a bare Starlette "
    "endpoint doing the same work (validation, durable SQLite insert, RQ enqueue), served the "
    "same way (taking turns; the round of median rate)",
    lambda args, gen: hotpaths.create(gen, args.workers, max(args.rounds, 3)),
)
BENCHMARKS["pages"] = (
    f"BASIC and FULL pages over {api.seed.TASKS:,} stored tasks, one page of {api.PAGE_SIZE}: "
    "medians of sequential requests on one keep-alive connection, each taking turns with "
    "GetTask MINIMAL, its reference; [n] = matching tasks",
    lambda args, gen: hotpaths.pages(args.workers, args.max_seconds),
)
BENCHMARKS["submission"] = (
    "Submission: one RQ burst worker into KubernetesCluster against kmock's Kubernetes emulator "
    "over HTTP (best of 3 after a warm-up), against the same cluster.submit calls in a bare loop",
    lambda args, gen: hotpaths.submission(args.submit_tasks, args.connections, args.workers),
)
#: Names that stand for several benchmarks.
GROUPS = {
    "api": ["throughput", "list"],
    "hotpaths": ["create", "pages", "submission", "fixedcost"],
    "all": list(BENCHMARKS),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="name",
        help=f"benchmarks to run: {', '.join([*BENCHMARKS, *GROUPS])} (default: all)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=Settings.model_fields["workers"].default,
        help="gunicorn workers of every server (default: the KUEUE_TES_WORKERS default)",
    )
    parser.add_argument("--connections", type=int, default=16, help="load connections")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds; the best counts")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each")
    parser.add_argument(
        "--max-seconds", type=float, default=2.5, help="time cap of each latency measurement"
    )
    parser.add_argument(
        "--runtime-rounds", type=int, default=3, help="runtime: timed tasks of 20 executors"
    )
    parser.add_argument(
        "--runtime-tasks", type=int, default=40, help="runtime: trivial tasks submitted at once"
    )
    parser.add_argument(
        "--local-cpu",
        type=float,
        default=16.0,
        help="runtime: the raised KUEUE_TES_LOCAL_CPU of the second throughput run",
    )
    parser.add_argument(
        "--watcher-tasks", type=int, default=300, help="watcher: tasks replayed at once"
    )
    parser.add_argument(
        "--submit-tasks", type=int, default=400, help="submit: tasks enqueued at once"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; return 1 if one could not run."""
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS and name not in GROUPS]
    if unknown:
        known = ", ".join([*BENCHMARKS, *GROUPS])
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {known}")
    names: list[str] = []
    for name in args.names or ["all"]:
        for each in GROUPS.get(name, [name]):
            if each not in names:
                names.append(each)
    gen = load_generator(args.connections, args.duration, args.warmup)
    loaded = bool({"throughput", "auth", "create", "metrics"} & set(names))  # the load users
    used = f"{gen.label}, best of {args.rounds} rounds" if loaded else "none"
    print(
        f"kueue-tes benchmarks | machine: {machine()} | load generator: {used} | server: "
        f"gunicorn, {args.workers} uvicorn workers, access log off, keep-alive"
    )
    if loaded and isinstance(gen, PythonLoad):
        print(
            "NOTE: wrk is not on PATH, so throughput uses a Python load generator that may "
            "saturate before the server does (ratios drift towards 1). Install wrk for real "
            "figures: apt-get install -y wrk (Debian/Ubuntu), brew install wrk (macOS)."
        )
    failed = 0
    for name in names:
        title, run = BENCHMARKS[name]
        started = time.monotonic()
        try:
            rows = run(args, gen)
        except Exception as exc:
            failed += 1
            print(f"\n{title}\n  could not run: {exc}")
            continue
        note(f"{name}: {time.monotonic() - started:.0f} s")
        print()
        print(table(title, rows), flush=True)
    print("\nTimings are measurements, not assertions; ok? only compares with the design targets.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
