"""A task pod's sandboxes run by hand: the reference of the runtime benchmark's fixed cost.

The same Job that the worker builds for ``kueue-tes serve`` (the same settings: this Python in
our containers, the default pod layout), its volumes prepared and each container started in the
same bubblewrap sandbox as the local runtime starts it, in kubelet's order for the layout, with
nothing else: no API, queue, worker, admission, pod thread, status reports or watcher.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

Json = dict[str, Any]
TASK_ID = "01hzzzzzzzzzzzzzzzzzzzzzzz"


def _keep() -> tuple[str, ...]:
    # As `kueue-tes serve` (app/cli.py): a fresh /tmp in a sandbox must not hide this program.
    import app

    ours = {sys.prefix, str(Path(app.__file__).resolve().parents[1])}
    return tuple(sorted(p for p in ours if Path(p).is_relative_to("/tmp")))


def run_pod_by_hand(work: Path, executors: list[Json]) -> float:
    """Run the pod of a task of ``executors`` by hand; return its seconds, volumes included."""
    from app.settings import Settings
    from worker import jobspec
    from worker.cluster.local import sandbox, volumes

    settings = Settings(data_dir=work, mongo_uri=None, redis_url=None).model_copy(
        update={"pod_python": sys.executable, "sidecar_cpu": "0"}
    )
    task = {"id": TASK_ID, "executors": executors}
    job, configmap = jobspec.build_job(task, settings), jobspec.build_configmap(task, settings)
    spec = job["spec"]["template"]["spec"]
    meta = {"name": "by-hand", "namespace": "bench", "uid": "u", "labels": {}, "annotations": {}}
    root = work / f"by-hand-{uuid.uuid4().hex[:8]}"
    bwrap, keep = shutil.which(settings.bwrap) or settings.bwrap, _keep()
    start = time.perf_counter()
    mounted, read_only = volumes.prepare(
        spec, root / "volumes", {configmap["metadata"]["name"]: configmap}
    )
    fields = sandbox.pod_fields({"metadata": meta, "spec": spec})

    def launch(container: Json) -> subprocess.Popen[bytes]:
        termination = root / "termination" / container["name"]
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_bytes(b"")
        argv = sandbox.bwrap_argv(
            container, mounted, fields=fields, termination_log=str(termination), bwrap=bwrap,
            privileged=os.geteuid() == 0, read_only_volumes=read_only, keep=keep,
        )  # fmt: skip
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    sidecars: list[subprocess.Popen[bytes]] = []
    try:
        for container in spec["initContainers"]:
            if container.get("restartPolicy") == "Always":
                sidecars.append(launch(container))  # started: no probe in the ready layout
            elif launch(container).wait() != 0:
                raise RuntimeError(f"by hand: {container['name']} failed")
        mains = {c["name"]: launch(c) for c in spec["containers"]}
        codes = {name: proc.wait() for name, proc in mains.items()}
        seconds = time.perf_counter() - start
    finally:
        for proc in sidecars:
            proc.kill()
            proc.wait()
    if any(codes.values()):
        raise RuntimeError(f"by hand: containers failed: {codes}")
    shutil.rmtree(root, ignore_errors=True)
    return seconds
