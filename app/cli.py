"""The `kueue-tes` command: serve (all in one), api, worker, settings."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from app.settings import Settings

log = logging.getLogger(__name__)


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def _local_cluster(settings: Settings) -> Any:
    import os

    from worker.cluster.base import PermanentError
    from worker.cluster.local.cluster import LocalCluster

    cpu = settings.local_cpu or float(os.cpu_count() or 1)
    memory = settings.local_memory_bytes or (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    )
    try:
        return LocalCluster(settings.data_dir / "local", cpu, memory, bwrap=settings.bwrap)
    except PermanentError as exc:
        sys.exit(f"kueue-tes serve: {exc}")


def serve(settings: Settings) -> None:
    """Run API, queue, worker, watcher and the local runtime in this one process."""
    # Connexion imports Starlette's test client, which warns about httpx on every start.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    import threading

    import uvicorn

    from app import queue, store
    from app.main import create_app
    from worker import context
    from worker.watcher import Watcher

    # The local runtime ignores images: our own containers run this very interpreter.
    settings = settings.model_copy(update={"pod_python": sys.executable})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cluster = _local_cluster(settings)
    task_store = store.open_store(settings)
    connection = queue.connect(settings)
    task_queue = queue.TaskQueue(settings, connection)
    context.install(context.Context(settings=settings, store=task_store, cluster=cluster))
    queue.start_thread_worker(settings, connection)
    watcher = Watcher(task_store, cluster, resubmit=task_queue.submit)
    threading.Thread(target=watcher.run, name="kueue-tes-watcher", daemon=True).start()
    app = create_app(settings, task_store, task_queue)
    log.info(
        "kueue-tes serving TES 1.1 on http://%s:%d/ga4gh/tes/v1 (store: %s, queue: %s, "
        "runtime: local, images are not pulled)",
        settings.host,
        settings.port,
        (settings.mongo_uri and "MongoDB") or settings.store_path(),
        settings.redis_url or "embedded",
    )
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        watcher.stop()
        cluster.close()
        task_store.close()


def api(settings: Settings) -> None:
    """Run the API under gunicorn with uvicorn workers (production)."""
    from gunicorn.app.base import BaseApplication

    from app.main import create_app

    if not settings.redis_url:
        sys.exit(
            "kueue-tes api: set KUEUE_TES_REDIS_URL (the workers need a shared queue); "
            "`kueue-tes serve` runs everything in one process without it"
        )

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("worker_class", "uvicorn.workers.UvicornWorker")
            self.cfg.set("accesslog", None)

        def load(self) -> Any:
            return create_app(settings)

    _Gunicorn().run()


def worker(settings: Settings, burst: bool = False) -> None:
    """Run an RQ worker for submit and cancel jobs (production)."""
    from app import queue, store
    from worker import context

    if not settings.redis_url:
        sys.exit("kueue-tes worker: set KUEUE_TES_REDIS_URL to the queue the API enqueues on")
    context.install(context.Context(settings=settings, store=store.open_store(settings)))
    queue.run_worker(settings, queue.connect(settings), burst=burst)


def settings_table() -> str:
    """Return every setting as a Markdown table: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if name == "data_dir":
            default = "~/.local/share/kueue-tes"
        elif isinstance(default, list):
            default = ",".join(default)
        shown = "" if default is None else f"`{default}`"
        rows.append(f"| `KUEUE_TES_{name.upper()}` | {shown} | {info.description} |")
    return "\n".join(rows) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kueue-tes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "API, queue and worker in one process; embedded store and queue by default"),
        ("api", "the HTTP API under gunicorn (needs KUEUE_TES_REDIS_URL)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--host", help="address to listen on (KUEUE_TES_HOST)")
        cmd.add_argument("--port", type=int, help="port to listen on (KUEUE_TES_PORT)")
        if name == "serve":
            cmd.add_argument("--data-dir", type=Path, help="state directory (KUEUE_TES_DATA_DIR)")
    work = sub.add_parser("worker", help="an RQ worker for submit and cancel jobs")
    work.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    sub.add_parser("settings", help="list every KUEUE_TES_* setting")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `kueue-tes` console script."""
    args = _parser().parse_args(argv)
    if args.command == "settings":
        print(settings_table(), end="")
        return
    settings = _settings(args)
    _logging(settings)
    if args.command == "serve":
        serve(settings)
    elif args.command == "api":
        api(settings)
    else:
        worker(settings, burst=args.burst)


if __name__ == "__main__":
    main()
