"""The `kueue-tes` command: serve (all in one), api, worker, settings, manifest, task."""

from __future__ import annotations

import argparse
import logging
import os
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


def _check_security(settings: Settings, command: str) -> Any:
    """Return the authenticator, or exit saying which auth or routing setting to fix."""
    from app import auth, routing

    try:
        authenticator = auth.Authenticator(settings)
        routing.load(settings)
    except ValueError as exc:
        sys.exit(f"kueue-tes {command}: {exc}")
    return authenticator


def _local_cluster(settings: Settings) -> Any:

    from worker.cluster.base import PermanentError
    from worker.cluster.local import podimages
    from worker.cluster.local.cluster import LocalCluster

    cpu = settings.local_cpu or float(os.cpu_count() or 1)
    memory = settings.local_memory_bytes or (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    )
    # A fresh /tmp in each sandbox must not hide this program when it is installed there.
    import app

    ours = {sys.prefix, str(Path(app.__file__).resolve().parents[1])}
    keep = tuple(sorted(p for p in ours if Path(p).is_relative_to("/tmp")))
    try:
        images = podimages.from_settings(settings)
        return LocalCluster(
            settings.data_dir / "local", cpu, memory, bwrap=settings.bwrap, keep=keep, images=images
        )
    except (PermanentError, ValueError) as exc:  # ValueError: a registry auth file unread
        sys.exit(f"kueue-tes serve: {exc}")


def _watcher(settings: Settings, task_store: Any, cluster: Any, task_queue: Any) -> Any:
    """Return the watcher of a process, configured from the settings."""
    from worker.watcher import Watcher

    return Watcher(
        task_store,
        cluster,
        resubmit=task_queue.submit,
        recancel=task_queue.cancel,
        grace_seconds=settings.resubmit_grace_seconds,
        image_pull_grace_seconds=settings.image_pull_grace_seconds,
        no_workload_seconds=settings.no_workload_seconds,
        progress_seconds=settings.progress_seconds,
        running_progress_seconds=settings.running_progress_seconds,
        pod_create_grace_seconds=settings.pod_create_grace_seconds,
    )


def serve(settings: Settings) -> None:
    """Run API, queue, worker, watcher and the local runtime in this one process."""
    # Connexion imports Starlette's test client, which warns about httpx on every start.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    import signal
    import threading

    import uvicorn

    from app import queue, store
    from app.main import create_app
    from worker import context

    # Our own containers run this very interpreter on the host's root file system. Their
    # cpu request would make a 1-cpu task ask for 1.1 and halve what a small machine runs at
    # once; locally they count as nothing unless the operator says otherwise.
    local: dict[str, Any] = {"pod_python": sys.executable}
    if "sidecar_cpu" not in settings.model_fields_set and not os.environ.get(
        "KUEUE_TES_SIDECAR_CPU"
    ):
        local["sidecar_cpu"] = "0"
    # Reading a local pod's log is reading a file: the ready layout's progress can be prompt.
    if "progress_seconds" not in settings.model_fields_set and not os.environ.get(
        "KUEUE_TES_PROGRESS_SECONDS"
    ):
        local["progress_seconds"] = 0.25
    settings = settings.model_copy(update=local)
    authenticator = _check_security(settings, "serve")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cluster = _local_cluster(settings)
    task_store = store.open_store(settings)
    connection = queue.connect(settings)
    task_queue = queue.TaskQueue(settings, connection)
    context.install(context.Context(settings=settings, store=task_store, cluster=cluster))
    queue.start_thread_worker(settings, connection)
    watcher = _watcher(settings, task_store, cluster, task_queue)
    watching = threading.Thread(target=watcher.run, name="kueue-tes-watcher", daemon=True)
    watching.start()
    app = create_app(settings, task_store, task_queue, authenticator)
    log.info(
        "kueue-tes serving TES 1.1 on http://%s:%d/ga4gh/tes/v1 (store: %s, queue: %s, "
        "runtime: local, %s)",
        settings.host,
        settings.port,
        (settings.mongo_uri and "MongoDB") or settings.store_path(),
        settings.redis_url or "embedded",
        "images are not pulled" if settings.local_images == "host" else "images are pulled",
    )
    # uvicorn re-raises SIGTERM once it has shut down; with the default action that would end
    # the process before `finally`, leaving the pods' sandboxes to --die-with-parent (racy).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        watcher.stop()
        cluster.close()  # kills every pod's processes and waits until they are gone
        watching.join(5)
        task_store.close()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def api(settings: Settings) -> None:
    """Run the API under gunicorn with uvicorn workers (production)."""
    import shutil
    import tempfile

    from gunicorn.app.base import BaseApplication

    if not settings.redis_url:
        sys.exit(
            "kueue-tes api: set KUEUE_TES_REDIS_URL (the workers need a shared queue); "
            "`kueue-tes serve` runs everything in one process without it"
        )
    _check_security(settings, "api")  # before gunicorn, whose workers would fail one by one
    # Every worker counts into one fresh directory that a scrape of any worker sums; it must be
    # set before any metric value is made (in the workers), and prometheus_client must use it.
    shared = tempfile.mkdtemp(prefix="kueue-tes-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    from app import metrics
    from app.main import create_app

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("worker_class", "uvicorn.workers.UvicornWorker")
            self.cfg.set("accesslog", None)
            self.cfg.set("child_exit", lambda _server, worker: metrics.mark_dead(worker.pid))

        def load(self) -> Any:
            return create_app(settings)

    try:
        _Gunicorn().run()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _metrics_port(settings: Settings) -> None:
    """Serve the worker's or watcher's /metrics on KUEUE_TES_METRICS_PORT (0: not at all)."""
    if settings.metrics and settings.metrics_port:
        from app import metrics

        metrics.serve(settings.host, settings.metrics_port)


_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _kubernetes(settings: Settings, command: str) -> Any:
    """Connect to the cluster, or exit with a message that says why not."""
    import importlib

    try:  # imported by name: the only module that imports the kubernetes client
        backend = importlib.import_module("worker.cluster.kubernetes")
    except ImportError as exc:
        sys.exit(f"kueue-tes {command}: the Kubernetes backend is not available: {exc}")
    lease_namespace = settings.lease_namespace
    if lease_namespace is None and _SA_NAMESPACE.is_file():
        lease_namespace = _SA_NAMESPACE.read_text().strip()
    try:
        return backend.KubernetesCluster.from_config(
            settings.namespace, lease_namespace=lease_namespace
        )
    except backend.PermanentError as exc:
        sys.exit(f"kueue-tes {command}: {exc}")


def worker(settings: Settings, burst: bool = False) -> None:
    """Run an RQ worker for submit and cancel jobs against Kubernetes (production)."""
    from app import queue, store
    from worker import context

    if not settings.redis_url:
        sys.exit("kueue-tes worker: set KUEUE_TES_REDIS_URL to the queue the API enqueues on")
    cluster = _kubernetes(settings, "worker")
    _metrics_port(settings)
    context.install(
        context.Context(settings=settings, store=store.open_store(settings), cluster=cluster)
    )
    queue.run_worker(settings, queue.connect(settings), burst=burst)


def watch(settings: Settings) -> None:
    """Run the watcher against Kubernetes; of several replicas, the Lease holder works."""
    import signal
    import socket

    from app import queue, store
    from worker.election import Elector

    if not settings.redis_url:
        sys.exit("kueue-tes watch: set KUEUE_TES_REDIS_URL to the queue the API enqueues on")
    cluster = _kubernetes(settings, "watch")
    identity = f"{socket.gethostname()}-{os.getpid()}"
    try:
        elector = Elector(
            cluster,
            settings.lease_name,
            identity,
            settings.lease_duration_seconds,
            settings.lease_renew_seconds,
        )
    except ValueError as exc:
        sys.exit(f"kueue-tes watch: {exc}")
    task_store = store.open_store(settings)
    task_queue = queue.TaskQueue(settings, queue.connect(settings))
    watcher = _watcher(settings, task_store, cluster, task_queue)
    _metrics_port(settings)
    signal.signal(signal.SIGTERM, lambda *_: watcher.stop())
    log.info("kueue-tes watch: %s stands for Lease %s", identity, settings.lease_name)
    elector.start()
    try:
        watcher.run(settings.resync_seconds, leader=lambda: elector.is_leader)
    except KeyboardInterrupt:
        pass
    finally:
        elector.stop()  # gives the Lease up: a standby leads without waiting for it to expire
        cluster.close()
        task_store.close()


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


#: The id `kueue-tes manifest` gives the task it prints; CreateTask assigns a real one.
MANIFEST_ID = "0" * 26


def _settings_file(path: Path) -> dict[str, str]:
    """Read the ``KUEUE_TES_<SETTING>=value`` lines of a dotenv-style file as Settings fields."""
    fields: dict[str, str] = {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.removeprefix("export ").partition("=")
        field = name.strip().lower().removeprefix("kueue_tes_")
        if (
            not equals
            or not name.strip().upper().startswith("KUEUE_TES_")
            or (field not in Settings.model_fields)
        ):
            raise ValueError(f"{path}:{number}: not a KUEUE_TES_<SETTING>=value line: {line}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        fields[field] = value
    return fields


def manifest(task_file: str, settings_file: Path | None) -> int:
    """Print, as YAML, the ConfigMap and Job the worker would create for a task; return 0 or 2."""
    import json

    import yaml
    from pydantic import ValidationError

    from app import validation
    from app.models import State, TaskIn
    from worker import jobspec

    def fail(message: str) -> int:
        print(f"kueue-tes manifest: {message}", file=sys.stderr)
        return 2

    try:
        overrides: dict[str, Any] = _settings_file(settings_file) if settings_file else {}
        settings = Settings(**overrides)
        raw = sys.stdin.buffer.read() if task_file == "-" else Path(task_file).read_bytes()
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = "KUEUE_TES_" + "_".join(str(part) for part in error["loc"]).upper()
        return fail(f"setting {name}: {error['msg']}")
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    if len(raw) > settings.max_body_bytes:
        return fail(f"400 Bad Request: body: over the limit of {settings.max_body_bytes} bytes")
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise validation.InvalidTask("body", "must be a JSON object")
        task = TaskIn.model_validate(body)
        notes = validation.check_task(
            task, settings.backend_parameters, settings.max_content_bytes, settings
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return fail(f"400 Bad Request: body: not valid JSON ({exc})")
    except ValidationError as exc:
        return fail(f"400 Bad Request: {validation.from_pydantic(exc)}")
    except validation.InvalidTask as exc:
        return fail(f"400 Bad Request: {exc}")
    doc = task.model_dump(mode="json", exclude_none=True)
    doc.update(id=MANIFEST_ID, state=State.QUEUED.value)
    # Never print the worker's secrets: the copied variables are shown by name only.
    hidden = {name: "(from the worker's environment)" for name in settings.sequencer_host_env}
    try:
        objects = [jobspec.build_configmap(doc, settings), jobspec.build_job(doc, settings, hidden)]
    except ValueError as exc:
        return fail(f"the task cannot be turned into a pod: {exc}")
    for note in notes:
        print(f"kueue-tes manifest: note: {note}", file=sys.stderr)
    print(yaml.safe_dump_all(objects, sort_keys=True), end="")
    return 0


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
    sub.add_parser("watch", help="the watcher on Kubernetes (needs KUEUE_TES_REDIS_URL)")
    sub.add_parser("settings", help="list every KUEUE_TES_* setting")
    shown = sub.add_parser("manifest", help="print the objects the worker would create for a task")
    shown.add_argument("task", help="a CreateTask body: a JSON file, or - for stdin")
    shown.add_argument(
        "--settings", type=Path, help="dotenv-style file of KUEUE_TES_* lines over the environment"
    )
    # Listed here for --help only: main() hands `task ...` to the client (app/client).
    sub.add_parser("task", help="a TES client: create, get, list, wait, cancel, logs (--help)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `kueue-tes` console script."""
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["task"]:
        from app.client import commands

        sys.exit(commands.run(words[1:]))
    args = _parser().parse_args(argv)
    if args.command == "settings":
        print(settings_table(), end="")
        return
    if args.command == "manifest":
        code = manifest(args.task, args.settings)
        if code:
            sys.exit(code)
        return
    settings = _settings(args)
    _logging(settings)
    if args.command == "serve":
        serve(settings)
    elif args.command == "api":
        api(settings)
    elif args.command == "watch":
        watch(settings)
    else:
        worker(settings, burst=args.burst)


if __name__ == "__main__":
    main()
