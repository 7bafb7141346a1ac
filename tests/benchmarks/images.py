"""The image benchmark of issue 10: executors on a cached image, and a cold pull of 100 MB.

A real registry runs on loopback (tests/registry.py: Debian's docker-registry) with images the
benchmark builds itself. Two figures, each against a reference measured in the same run:

* per-executor overhead in ``kueue-tes serve`` with ``KUEUE_TES_LOCAL_IMAGES=pull`` and the
  image cached, against a second server in host-root mode (``host``), the same tasks taking
  turns; target: at most 1.2 times host-root mode's overhead;
* a cold pull-and-unpack (``ImageStore.pull`` into an empty cache: resolve, download, check
  digests, keep the blobs, decompress, apply the layers) of an image of about 100 MB, against
  ``curl`` copying the same layer blobs from the same registry to files; target: at most 2x.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests import registry as testreg
from tests.benchmarks import runtime
from tests.benchmarks.harness import Row, note

EXECUTORS = runtime.EXECUTORS
MAX_OVERHEAD_RATIO = 1.2
MAX_PULL_RATIO = 2.0
LAYERS = 4
LAYER_BYTES = 25 * 1024 * 1024  # random, so about as large compressed: 100 MB in all


def _big_layer(index: int, size: int) -> testreg.Layer:
    """Return a layer of one file of random (incompressible) bytes."""
    files: dict[str, testreg.Entry] = {"data": {}, f"data/blob-{index}": os.urandom(size)}
    return testreg.layer(files)


def _curl(registry: testreg.Registry, repository: str, digests: list[str], into: Path) -> float:
    """Copy the blobs with curl, one after the other, to files; return the seconds."""
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is not installed (apt-get install curl)")
    started = time.perf_counter()
    for digest in digests:
        url = f"http://{registry.host}/v2/{repository}/blobs/{digest}"
        subprocess.run([curl, "-sSf", "-o", str(into / digest), url], check=True)
    return time.perf_counter() - started


def _pull(registry: testreg.Registry, image: str, into: Path) -> float:
    """Pull and unpack the image into an empty cache; return the seconds."""
    from worker.cluster.local.images import ImageStore
    from worker.cluster.local.registry import Registry

    store = ImageStore(into, Registry(insecure=frozenset({registry.host})), 10 * 1024**3)
    started = time.perf_counter()
    pulled = store.pull(image, "IfNotPresent")
    seconds = time.perf_counter() - started
    if store.downloads != LAYERS or not Path(pulled.root, "data").is_dir():
        raise RuntimeError(f"the pull did not download {LAYERS} layers: {store.downloads}")
    return seconds


def _overhead(run: runtime.TaskRun, direct: float) -> float:
    return (run.span - direct) / EXECUTORS


def images(rounds: int) -> list[Row]:
    """Per-executor overhead on a cached image against host-root mode; a cold 100 MB pull."""
    reason = testreg.need_registry()
    if reason is not None:
        raise RuntimeError(reason)
    load = os.getloadavg()[0]
    arch, _ = testreg.host_architecture()
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-images-") as tmp:
        work = Path(tmp)
        registry = testreg.Registry(work / "registry")
        registry.start()
        try:
            box = testreg.layer(testreg.busybox_root())
            registry.push_image("bench/busybox", "1", [box], testreg.config([box], arch))
            note(f"images: building and pushing {LAYERS} layers of {LAYER_BYTES >> 20} MiB")
            big = [_big_layer(i, LAYER_BYTES) for i in range(LAYERS)]
            registry.push_image("bench/big", "1", big, testreg.config(big, arch))
            size = sum(len(x.blob) for x in big)
            pulls, copies = [], []
            for i in range(rounds):
                note(f"images: cold pull of {size >> 20} MiB, round {i + 1} of {rounds}")
                copies.append(_curl(registry, "bench/big", [x.digest for x in big], work))
                for x in big:
                    (work / x.digest).unlink()
                pulls.append(_pull(registry, f"{registry.host}/bench/big:1", work / f"c{i}"))
                shutil.rmtree(work / f"c{i}")
            host_runs, image_runs, direct = _executors(registry, work, rounds)
        finally:
            registry.stop()
    reference = statistics.median(direct)
    host = statistics.median(_overhead(r, d) for r, d in zip(host_runs, direct, strict=True))
    image = statistics.median(_overhead(r, d) for r, d in zip(image_runs, direct, strict=True))
    pull, copy = statistics.median(pulls), statistics.median(copies)
    return [
        Row("load average (1 min): start -> end", f"{load:.1f} -> {os.getloadavg()[0]:.1f}"),
        Row(
            f"{EXECUTORS} x `true` run directly (subprocess, sequential)", runtime._each(reference)
        ),
        Row(
            f"overhead per executor, cached image (median of {rounds})",
            f"{image * 1000:.1f} ms",
            reference=f"{host * 1000:.1f} ms host-root",
            ratio=f"{image / host:.2f}x",
            target=f"<= {MAX_OVERHEAD_RATIO:g}x",
            ok=image / host <= MAX_OVERHEAD_RATIO,
        ),
        Row(
            f"executor span, cached image ({EXECUTORS} executors)",
            runtime._each(statistics.median(r.span for r in image_runs)),
            reference=runtime._ms(statistics.median(r.span for r in host_runs)),
        ),
        Row(
            f"cold pull and unpack, {size / 1e6:.0f} MB in {LAYERS} layers (median of {rounds})",
            f"{pull:.2f} s ({size / pull / 1e6:.0f} MB/s)",
            reference=f"{copy:.2f} s curl",
            ratio=f"{pull / copy:.2f}x",
            target=f"<= {MAX_PULL_RATIO:g}x",
            ok=pull / copy <= MAX_PULL_RATIO,
        ),
    ]


def _executors(
    registry: testreg.Registry, work: Path, rounds: int
) -> tuple[list[runtime.TaskRun], list[runtime.TaskRun], list[float]]:
    """Run the same 20-executor task on a host-root server and on a pulling one, by turns."""
    image = f"{registry.host}/bench/busybox:1"
    host_body = {
        "name": "host",
        "executors": [{"image": "busybox", "command": ["true"]}] * EXECUTORS,
    }
    image_body = {"name": "image", "executors": [{"image": image, "command": ["true"]}] * EXECUTORS}
    pulling = {"KUEUE_TES_LOCAL_IMAGES": "pull", "KUEUE_TES_INSECURE_REGISTRIES": registry.host}
    host_runs, image_runs, direct = [], [], []
    with runtime.serve(work) as host, runtime.serve(work, pulling) as pulled:
        note("images: warm-up tasks (the pulling server pulls its image once)")
        runtime.run_task(host, host_body)
        runtime.run_task(pulled, image_body)
        for i in range(rounds):
            note(f"images: {EXECUTORS} executors on each server, round {i + 1} of {rounds}")
            direct.append(runtime.run_directly(EXECUTORS))
            host_runs.append(runtime.run_task(host, host_body))
            image_runs.append(runtime.run_task(pulled, image_body))
    return host_runs, image_runs, direct
