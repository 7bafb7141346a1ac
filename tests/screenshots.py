"""Take the dashboard screenshots of docs/: ``python -m tests.screenshots [DIR]``.

Runs a real `kueue-tes serve` (1 cpu of quota, so that tasks wait) with a few example tasks,
then headless Chromium photographs the task list, one task's page and the queues page.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.browser import browser_context
from tests.conftest import ROOT
from tests.integration.e2e_support import serve_env, serving

TASKS: list[dict[str, Any]] = [
    {
        "name": "align-sample-07",
        "tags": {"project": "genome", "sample": "s07"},
        "executors": [
            {
                "image": "biocontainers/bwa:0.7.17",
                "command": ["sh", "-c", "echo '[M::bwa_idx_load] read 3 ALT contigs'; echo done"],
            },
            {"image": "biocontainers/samtools:1.9", "command": ["sh", "-c", "echo sorted; exit 0"]},
        ],
    },
    {
        "name": "call-variants-07",
        "tags": {"project": "genome", "sample": "s07"},
        "executors": [
            {
                "image": "broadinstitute/gatk:4.5",
                "command": [
                    "sh",
                    "-c",
                    "echo 'HaplotypeCaller: 1,204 variants'; "
                    "echo 'WARN: low coverage on chr21' >&2; exit 2",
                ],
            }
        ],
    },
    {
        "name": "qc-report",
        "tags": {"project": "qc"},
        "executors": [{"image": "multiqc/multiqc", "command": ["sleep", "20"]}],
    },
    {
        "name": "align-sample-08",
        "tags": {"project": "genome", "sample": "s08"},
        "executors": [{"image": "biocontainers/bwa:0.7.17", "command": ["sleep", "20"]}],
    },
    {
        "name": "train-model",
        "tags": {"project": "ml"},
        "resources": {"cpu_cores": 1, "backend_parameters": {"queue": "gpu"}},
        "executors": [{"image": "pytorch/pytorch", "command": ["sleep", "20"]}],
    },
]


def _post(base: str, body: dict[str, Any]) -> str:
    request = urllib.request.Request(
        f"{base}/tasks", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["id"])


def main(out: Path) -> None:
    """Serve, create the tasks, photograph the three pages into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = serve_env({"KUEUE_TES_LOCAL_CPU": "1", "KUEUE_TES_SIDECAR_CPU": "0"})
    with tempfile.TemporaryDirectory() as tmp, serving(Path(tmp) / "data", env) as server:
        ids = [_post(server.base, {"resources": {"cpu_cores": 1}, **task}) for task in TASKS]
        server.wait_all(ids[:2])
        time.sleep(2)  # the rest: one running, the others waiting behind the quota
        root = server.base.removesuffix("/ga4gh/tes/v1")
        with browser_context() as context:
            page = context.new_page()
            for name, path in (
                ("list", "/dashboard/"),
                ("task", f"/dashboard/tasks/{ids[1]}"),
                ("queues", "/dashboard/queues"),
            ):
                page.goto(root + path)
                page.screenshot(path=str(out / f"dashboard-{name}.png"), full_page=True)
            page.goto(f"{root}/dashboard/tasks/{ids[3]}")
            page.screenshot(path=str(out / "dashboard-waiting.png"), full_page=True)
        for task_id in ids:
            server.call("POST", f"/tasks/{task_id}:cancel")
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images")
