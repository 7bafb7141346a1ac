"""End to end with images: a real `kueue-tes serve` pulling from registries on loopback.

The images are built by the tests (tests/registry.py) and pushed to Debian's docker-registry;
the server reaches them as `KUEUE_TES_INSECURE_REGISTRIES` says. Every task goes through the
API, the queue, the Job, the local runtime and the watcher, as a user's would.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import registry as testreg
from tests.conftest import ROOT
from tests.integration.e2e_support import Json, Server, serve_env, serving, show
from tests.integration.test_e2e_layouts import HeldInput, pod_of, ready
from tests.registry import Registry

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

open_registry = testreg.open_registry
private_registry = testreg.private_registry


@dataclass
class World:
    """The server under test, the registries it pulls from, and the file:// root."""

    server: Server
    images: dict[str, str]
    roots: Path
    open: Registry
    private: Registry
    data: Path


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, open_registry: Registry, private_registry: Registry
) -> Iterator[World]:
    """One `kueue-tes serve` that pulls: from the open registry, and from the private one
    with a wrong password."""
    tmp = tmp_path_factory.mktemp("e2e-images")
    roots = tmp / "roots"
    roots.mkdir()
    auth = tmp / "config.json"
    wrong = base64.b64encode(b"alice:wrong").decode()
    auth.write_text(json.dumps({"auths": {private_registry.host: {"auth": wrong}}}))
    env = serve_env(
        {
            "KUEUE_TES_LOCAL_IMAGES": "pull",
            "KUEUE_TES_INSECURE_REGISTRIES": f"{open_registry.host},{private_registry.host}",
            "KUEUE_TES_REGISTRY_AUTH_FILE": str(auth),
            "KUEUE_TES_IMAGE_PULL_GRACE_SECONDS": "3",
            "KUEUE_TES_FILE_ROOTS": str(roots),
            "KUEUE_TES_LOCAL_CPU": "20",
        }
    )
    with serving(tmp / "data", env) as server:
        yield World(
            server, open_registry.names, roots, open_registry, private_registry, tmp / "data"
        )


def _task(name: str, image: str, command: list[str], **executor: Any) -> Json:
    return {"name": name, "executors": [{"image": image, "command": command, **executor}]}


def _ran(task: Json, index: int = 0) -> Json:
    assert task["state"] == "COMPLETE", show(task)
    attempt: Json = task["logs"][-1]
    return dict(attempt["logs"][index])


def test_tasks_run_on_their_images(world: World) -> None:
    """A file only the image has; the image's Env and WorkingDir; a whiteout; no shell."""
    images, server = world.images, world.server
    marker = server.create(_task("marker", images["marker"], ["cat", "/etc/marker"]))
    script = "echo $FROM_IMAGE $SHARED; pwd"
    configured = server.create(
        _task("config", images["config"], ["sh", "-c", script], env={"SHARED": "task"})
    )
    whiteout = server.create(
        _task("whiteout", images["whiteout"], ["sh", "-c", "test ! -e /etc/doomed && ls /opt/old"])
    )
    bare = _task("noshell", images["noshell"], ["/app/busybox", "cp", "/etc/marker", "/out/m.txt"])
    out = world.roots / "noshell"
    bare["outputs"] = [{"path": "/out/m.txt", "url": f"file://{out}/m.txt", "type": "FILE"}]
    noshell = server.create(bare)
    multi = server.create(_task("multi", images["multi"], ["cat", "/etc/marker"]))
    done = server.wait_all([marker, configured, whiteout, noshell, multi], timeout=120)

    task = done[marker]
    assert _ran(task)["stdout"] == "marker from the image\n", show(task)
    digest = f"{world.open.host}/tests/marker@sha256:"
    ran = [line for line in task["logs"][-1]["system_logs"] if "ran" in line]
    assert ran and ran[0].startswith(f"executor 0 ran {images['marker']} as {digest}"), show(task)
    assert not any("images are not pulled" in line for line in task["logs"][-1]["system_logs"])
    # The image's Env under the task's; the image's WorkingDir where the task sets none.
    assert _ran(done[configured])["stdout"] == "image task\n/srv/app\n", show(done[configured])
    assert _ran(done[whiteout])["stdout"] == "c\n", show(done[whiteout])
    _ran(done[noshell])
    assert (out / "m.txt").read_text() == "no shell here\n"
    assert _ran(done[multi])["stdout"] == "mine\n", show(done[multi])


def test_images_that_cannot_be_pulled_end_in_system_error(world: World) -> None:
    """A missing image, a refused credential, a platform the image lacks: SYSTEM_ERROR, why."""
    server = world.server
    missing = server.create(_task("missing", f"{world.open.host}/tests/nosuch:1", ["true"]))
    refused = server.create(_task("refused", f"{world.private.host}/private/box:1", ["true"]))
    lacking = server.create(_task("lacking", world.images["lacking"], ["true"]))
    done = server.wait_all([missing, refused, lacking], timeout=90)
    expected = {
        missing: "not found (MANIFEST_UNKNOWN: manifest unknown)",
        refused: "refused the configured credentials (incorrect username or password)",
        lacking: "no match for platform",
    }
    for task_id, words in expected.items():
        task = done[task_id]
        assert task["state"] == "SYSTEM_ERROR", show(task)
        logs = task["logs"][-1]["system_logs"]
        final = [line for line in logs if "cannot be pulled" in line]
        assert final and words in final[0], show(task)
        assert "ErrImagePull" in final[0] or "ImagePullBackOff" in final[0], show(task)


def test_twenty_tasks_on_a_new_image_pull_it_once(world: World) -> None:
    arch, _ = testreg.host_architecture()
    box = testreg.layer(testreg.busybox_root(marker="one of twenty\n"))
    world.open.push_image("tests/twenty-e2e", "1", [box], testreg.config([box], arch))
    image = f"{world.open.host}/tests/twenty-e2e:1"
    ids = [world.server.create(_task(f"t{i}", image, ["cat", "/etc/marker"])) for i in range(20)]
    done = world.server.wait_all(ids, timeout=240)
    for task_id in ids:
        assert _ran(done[task_id])["stdout"] == "one of twenty\n", show(done[task_id])
    # The layer and the config, once each, for twenty tasks that started together.
    assert world.open.blob_fetches("tests/twenty-e2e") == 2


def test_the_readmes_example_runs_on_images(world: World) -> None:
    """manifests/examples/two-step.json, its alpine:3.20 standing in for the test busybox image
    (no Internet here), its results sent to this test's file root."""
    task = json.loads((ROOT / "manifests" / "examples" / "two-step.json").read_text())
    for executor in task["executors"]:
        assert executor["image"] == "alpine:3.20"
        executor["image"] = world.images["marker"]
    results = world.roots / "readme"
    task["outputs"][0]["url"] = f"file://{results}"
    done = world.server.wait_all([world.server.create(task)], timeout=60)
    (finished,) = done.values()
    assert finished["state"] == "COMPLETE", show(finished)
    assert (results / "shout.txt").read_text() == "HELLO FROM KUEUE-TES\n"
    assert (results / "count.txt").read_text().split() == ["21", "/data/out/shout.txt"]
    ran = [line for line in finished["logs"][-1]["system_logs"] if " ran " in line]
    assert len(ran) == 2, show(finished)


def test_executors_that_never_ran_are_not_said_to_have_run(world: World) -> None:
    """The ready layout starts every executor's container, on its image, before stage-in ends:
    while stage-in runs no executor has run, and after a failed stage-in none ever did."""
    executor = {"image": world.images["marker"], "command": ["cat", "/etc/marker"]}
    with HeldInput() as held:
        task = {
            "name": "never-ran",
            "inputs": [
                {"path": "/in/held.txt", "url": held.url},
                {"path": "/in/gone.txt", "url": f"file://{world.roots}/no/such/file"},
            ],
            "executors": [executor, executor],
        }
        task_id = world.server.create(task)
        assert held.asked.wait(60), world.server.lines_about(task_id)
        deadline = time.monotonic() + 60
        while (pod := pod_of(world.data, task_id)) is None or not ready(pod):
            assert time.monotonic() < deadline, world.server.lines_about(task_id)
            time.sleep(0.02)
        assert all(s["imageID"] for s in pod["status"]["containerStatuses"][:2]), pod
        # The watcher sees the Ready pod (and reads progress every 0.25 s) while stage-in waits.
        until = time.monotonic() + 2
        while time.monotonic() < until:
            shown = world.server.get(task_id)
            assert shown["state"] == "INITIALIZING", show(shown)
            assert not [x for x in shown["logs"][-1].get("system_logs", []) if " ran " in x]
            time.sleep(0.1)
        held.release.set()
        done = world.server.wait(task_id, timeout=60)
    assert done["state"] == "SYSTEM_ERROR", show(done)
    logs = done["logs"][-1]["system_logs"]
    assert any("input /in/gone.txt" in line for line in logs), show(done)
    assert not [line for line in logs if " ran " in line], show(done)
