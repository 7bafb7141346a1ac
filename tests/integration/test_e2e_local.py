"""End to end through the HTTP API: a real `kueue-tes serve`, its local runtime, real storage.

One server runs most tests. Their tasks are created together and polled together (the batch
fixture), so they run at the same time; each test then checks its own tasks' final FULL view.
Storage servers run on loopback: HTTP (ThreadingHTTPServer), S3 (moto's server) and FTP
(pyftpdlib), plus a file:// root.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests import spec
from tests.integration import test_filers
from tests.integration.e2e_support import (
    IMAGES_NOTE,
    Json,
    Server,
    ftp_server,
    processes_with,
    serve_env,
    serving,
    show,
)

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

# moto's S3 server, shared with the filer tests (module-scoped there and here).
moto_endpoint = test_filers.moto_endpoint

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class World:
    """The storage servers, the file:// root and the server under test."""

    tmp: Path
    roots: Path
    http: str
    s3: Any
    bucket: str
    ftp: str
    server: Server

    def s3_objects(self, prefix: str) -> dict[str, bytes]:
        """Return the bucket's objects under ``prefix``."""
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])
        return {
            item["Key"]: self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
            for item in listed
        }


def _files(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def http_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The filer tests' HTTP handler on a loopback port, serving a tmp dir for this module."""
    state = test_filers.HttpState(tmp_path_factory.mktemp("www"))
    (state.root / "files").mkdir()
    (state.root / "files" / "http.txt").write_text("over http\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), test_filers._http_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, http_base: str
) -> Iterator[World]:
    """Storage with inputs in place, and one `kueue-tes serve` that can reach all of it."""
    tmp = tmp_path_factory.mktemp("e2e")
    roots = tmp / "roots"
    (roots / "shared").mkdir(parents=True)
    (roots / "shared" / "ref.txt").write_text("over file\n")
    (tmp / "outside").mkdir()
    (tmp / "outside" / "secret.txt").write_text("not for tasks\n")

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    for key, body in {
        "in/file.txt": b"over s3\n",
        "in/dir/a.txt": b"s3 a\n",
        "in/dir/sub/b.txt": b"s3 b\n",
        "in/dirx/not-mine.txt": b"shares the letters, not the prefix\n",
    }.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    ftp_home = tmp / "ftp"
    (ftp_home / "files").mkdir(parents=True)
    (ftp_home / "files" / "ftp.txt").write_text("over ftp\n")
    (ftp_home / "tree" / "deep").mkdir(parents=True)
    (ftp_home / "tree" / "c.txt").write_text("ftp c\n")
    (ftp_home / "tree" / "deep" / "d.txt").write_text("ftp d\n")

    env = serve_env(
        {
            **CREDENTIALS,
            "KUEUE_TES_SEQUENCER_HOST_ENV": ",".join(CREDENTIALS),
            "KUEUE_TES_FILE_ROOTS": str(roots),
            "KUEUE_TES_S3_ENDPOINT_URL": moto_endpoint,
            "KUEUE_TES_S3_PATH_STYLE": "true",
            "KUEUE_TES_TRANSFER_RETRIES": "1",
            "KUEUE_TES_TRANSFER_BACKOFF_SECONDS": "0.05",
            # Room for every task of the batch at once: requests only decide admission here.
            "KUEUE_TES_LOCAL_CPU": "64",
        }
    )
    with ftp_server(ftp_home) as ftp, serving(tmp / "data", env) as server:
        yield World(tmp, roots, http_base, s3, bucket, ftp, server)


# -- the tasks of the batch ---------------------------------------------------------------------


def _pipeline(w: World) -> Json:
    out = f"file://{w.roots}/pipeline"
    return {
        "name": "e2e-pipeline",
        "inputs": [{"path": "/inputs/greeting.txt", "content": "hello from content\n"}],
        "volumes": ["/shared"],
        "executors": [
            {
                "image": "alpine",
                "command": [
                    "sh",
                    "-c",
                    'pwd; printf "%s\\n" "$GREETING" "$SPACED" > step0.txt; '
                    "cat /inputs/greeting.txt >> step0.txt",
                ],
                "workdir": "/shared",
                "env": {"GREETING": "hi there", "SPACED": "a b  c"},
                "stdout": "/logs/ex0.out",
            },
            {
                "image": "alpine",
                "command": ["tr", "a-z", "A-Z"],
                "stdin": "/shared/step0.txt",
                "stdout": "/results/upper.txt",
                "stderr": "/logs/ex1.err",
            },
            {
                "image": "alpine",
                "command": [
                    "sh",
                    "-c",
                    "pwd; cat /results/upper.txt /shared/step0.txt > /results/combined.txt; "
                    "echo to-stderr >&2; echo to-stdout",
                ],
                "workdir": "/scratch/here",
                "stdout": "/logs/ex2.out",
                "stderr": "/logs/ex2.err",
            },
        ],
        "outputs": [
            {"path": "/shared/step0.txt", "url": f"{out}/step0.txt"},
            {"path": "/results/upper.txt", "url": f"{out}/upper.txt"},
            {"path": "/results/combined.txt", "url": f"{out}/combined.txt"},
            {"path": "/logs", "url": f"{out}/logs", "type": "DIRECTORY"},
        ],
    }


def _ignore_error(w: World) -> Json:
    return {
        "name": "e2e-ignore-error",
        "executors": [
            {
                "image": "alpine",
                "command": ["sh", "-c", "echo first; echo bad >&2; exit 3"],
                "ignore_error": True,
            },
            {"image": "alpine", "command": ["echo", "second ran"]},
        ],
    }


def _executor_error(w: World) -> Json:
    out = f"file://{w.roots}/failed"
    return {
        "name": "e2e-executor-error",
        "executors": [
            {
                "image": "alpine",
                "command": ["sh", "-c", "echo partial > /out/partial.txt; echo failing; exit 5"],
            },
            {"image": "alpine", "command": ["sh", "-c", "echo never > /out/never.txt"]},
        ],
        "outputs": [
            {"path": "/out/partial.txt", "url": f"{out}/partial.txt"},
            {"path": "/out/never.txt", "url": f"{out}/never.txt"},
        ],
    }


def _no_such_command(w: World) -> Json:
    return {
        "name": "e2e-no-such-command",
        "executors": [
            {"image": "alpine", "command": ["no-such-command-e2e", "--flag"]},
            {"image": "alpine", "command": ["echo", "never"]},
        ],
    }


def _inputs(w: World) -> Json:
    return {
        "name": "e2e-inputs",
        "inputs": [
            {"path": "/in/content.txt", "content": "inline\n"},
            {"path": "/in/http.txt", "url": f"{w.http}/files/http.txt"},
            {"path": "/in/s3.txt", "url": f"s3://{w.bucket}/in/file.txt", "type": "FILE"},
            {"path": "/in/s3dir", "url": f"s3://{w.bucket}/in/dir", "type": "DIRECTORY"},
            {"path": "/in/ftp.txt", "url": f"ftp://alice:secret@{w.ftp}/files/ftp.txt"},
            {"path": "/in/ftpdir", "url": f"ftp://{w.ftp}/tree", "type": "DIRECTORY"},
            {"path": "/in/shared.txt", "url": f"file://{w.roots}/shared/ref.txt"},
        ],
        "executors": [
            {
                "image": "alpine",
                "command": [
                    "sh",
                    "-c",
                    'cd /in && find . -type f | sort | while read -r f; do printf "%s=%s\\n" '
                    '"$f" "$(cat "$f")"; done',
                ],
            },
            # Storage credentials reach the sequencer only, never an executor.
            {"image": "alpine", "command": ["env"]},
        ],
    }


def _outside_roots(w: World) -> Json:
    return {
        "name": "e2e-outside-roots",
        "inputs": [{"path": "/in/secret.txt", "url": f"file://{w.tmp}/outside/secret.txt"}],
        "executors": [{"image": "alpine", "command": ["cat", "/in/secret.txt"]}],
    }


def _outputs(w: World) -> Json:
    script = (
        "mkdir -p /data/out/sub /data/dir/nested/deeper && "
        "echo a > /data/out/a.txt && echo bb > /data/out/b.txt && echo c > /data/out/c.log && "
        "echo d > /data/out/sub/d.txt && echo x > /data/dir/x.txt && "
        "echo yy > /data/dir/nested/y.txt && echo zzz > /data/dir/nested/deeper/z.txt && "
        "echo h > /data/dir/.hidden"
    )
    return {
        "name": "e2e-outputs",
        "executors": [{"image": "alpine", "command": ["sh", "-c", script]}],
        "outputs": [
            {"path": "/data/out/*.txt", "path_prefix": "/data/", "url": f"s3://{w.bucket}/glob"},
            {"path": "/data/dir", "url": f"file://{w.roots}/dir-out/", "type": "DIRECTORY"},
            {"path": "/data/missing.txt", "url": f"file://{w.roots}/missing.txt"},
            {
                "path": "/data/out/*.none",
                "path_prefix": "/data/",
                "url": f"s3://{w.bucket}/none",
            },
        ],
    }


BATCH: dict[str, Callable[[World], Json]] = {
    "pipeline": _pipeline,
    "ignore_error": _ignore_error,
    "executor_error": _executor_error,
    "no_such_command": _no_such_command,
    "inputs": _inputs,
    "outside_roots": _outside_roots,
    "outputs": _outputs,
}


@pytest.fixture(scope="module")
def batch(world: World) -> dict[str, Json]:
    """Create every task of the batch at once, poll them together; return their last views."""
    ids = {name: world.server.create(build(world)) for name, build in BATCH.items()}
    last = world.server.wait_all(ids.values(), timeout=60)
    return {name: last[task_id] for name, task_id in ids.items()}


# -- checks -------------------------------------------------------------------------------------


def _final(task: Json, state: str) -> Json:
    """Check a terminal FULL view: state, spec shape, one attempt with the runtime's note."""
    assert task["state"] == state, show(task)
    spec.check("tesTask", task)
    assert len(task["logs"]) == 1, show(task)
    attempt: Json = task["logs"][0]
    assert any(IMAGES_NOTE in line for line in attempt["system_logs"]), show(task)
    assert attempt["start_time"] and attempt["end_time"], show(task)
    for output in attempt["outputs"]:
        assert isinstance(output["size_bytes"], str), show(task)
        assert output["size_bytes"].isdigit(), show(task)
    for executor in attempt["logs"]:
        assert isinstance(executor["exit_code"], int), show(task)
        assert executor["start_time"] <= executor["end_time"], show(task)
    return attempt


def _outputs_by_path(attempt: Json) -> dict[str, tuple[str, str]]:
    return {o["path"]: (o["url"], o["size_bytes"]) for o in attempt["outputs"]}


# -- the batch's tests --------------------------------------------------------------------------


def test_executors_share_files_with_workdir_env_and_redirections(
    world: World, batch: dict[str, Json]
) -> None:
    """Three executors share a volume and an input; workdir, env, stdin, stdout, stderr work."""
    task = batch["pipeline"]
    attempt = _final(task, "COMPLETE")
    assert world.server.history[task["id"]][-1] == "COMPLETE"
    step0 = "hi there\na b  c\nhello from content\n"
    upper = step0.upper()
    assert [e["exit_code"] for e in attempt["logs"]] == [0, 0, 0], show(task)
    times = [t for e in attempt["logs"] for t in (e["start_time"], e["end_time"])]
    assert times == sorted(times), f"executors must run one after another:\n{show(task)}"
    assert attempt["logs"][0]["stdout"] == "/shared\n", show(task)
    assert attempt["logs"][1]["stdout"] == upper, show(task)
    assert attempt["logs"][2]["stdout"] == "/scratch/here\nto-stdout\n", show(task)
    assert attempt["logs"][2]["stderr"] == "to-stderr\n", show(task)
    out = world.roots / "pipeline"
    assert _files(out) == {
        "step0.txt": step0,
        "upper.txt": upper,
        "combined.txt": upper + step0,
        "logs/ex0.out": "/shared\n",
        "logs/ex1.err": "",
        "logs/ex2.out": "/scratch/here\nto-stdout\n",
        "logs/ex2.err": "to-stderr\n",
    }
    url = f"file://{out}"
    assert _outputs_by_path(attempt) == {
        "/shared/step0.txt": (f"{url}/step0.txt", str(len(step0))),
        "/results/upper.txt": (f"{url}/upper.txt", str(len(upper))),
        "/results/combined.txt": (f"{url}/combined.txt", str(len(upper + step0))),
        "/logs/ex0.out": (f"{url}/logs/ex0.out", "8"),
        "/logs/ex1.err": (f"{url}/logs/ex1.err", "0"),
        "/logs/ex2.out": (f"{url}/logs/ex2.out", "24"),
        "/logs/ex2.err": (f"{url}/logs/ex2.err", "10"),
    }


def test_ignore_error_keeps_the_task_going(batch: dict[str, Json]) -> None:
    """ignore_error: a failing executor does not stop the next one and the task is COMPLETE."""
    task = batch["ignore_error"]
    attempt = _final(task, "COMPLETE")
    logs = attempt["logs"]
    assert [e["exit_code"] for e in logs] == [3, 0], show(task)
    assert (logs[0]["stdout"], logs[0]["stderr"]) == ("first\n", "bad\n"), show(task)
    assert logs[1]["stdout"] == "second ran\n", show(task)


def test_executor_error_skips_later_executors_and_still_uploads(
    world: World, batch: dict[str, Json]
) -> None:
    """A failing executor: EXECUTOR_ERROR, later ones skipped, outputs uploaded all the same."""
    task = batch["executor_error"]
    attempt = _final(task, "EXECUTOR_ERROR")
    assert len(attempt["logs"]) == 1, f"the skipped executor must not be logged:\n{show(task)}"
    assert attempt["logs"][0]["exit_code"] == 5, show(task)
    assert attempt["logs"][0]["stdout"] == "failing\n", show(task)
    url = f"file://{world.roots}/failed"
    assert attempt["outputs"] == [
        {"url": f"{url}/partial.txt", "path": "/out/partial.txt", "size_bytes": "8"}
    ], show(task)
    assert _files(world.roots / "failed") == {"partial.txt": "partial\n"}
    assert "output /out/never.txt not found; nothing uploaded" in attempt["system_logs"]


def test_a_command_that_does_not_exist_is_exit_code_127(batch: dict[str, Json]) -> None:
    """A missing program is exit code 127, as in a shell, and an EXECUTOR_ERROR."""
    task = batch["no_such_command"]
    attempt = _final(task, "EXECUTOR_ERROR")
    assert [e["exit_code"] for e in attempt["logs"]] == [127], show(task)
    assert "no-such-command-e2e" in attempt["logs"][0]["stderr"], show(task)


def test_inputs_from_every_scheme(batch: dict[str, Json]) -> None:
    """Inputs from content, http, s3 (file and prefix), ftp (file and directory) and file://."""
    task = batch["inputs"]
    attempt = _final(task, "COMPLETE")
    assert [e["exit_code"] for e in attempt["logs"]] == [0, 0], show(task)
    assert attempt["logs"][0]["stdout"] == (
        "./content.txt=inline\n"
        "./ftp.txt=over ftp\n"
        "./ftpdir/c.txt=ftp c\n"
        "./ftpdir/deep/d.txt=ftp d\n"
        "./http.txt=over http\n"
        "./s3.txt=over s3\n"
        "./s3dir/a.txt=s3 a\n"
        "./s3dir/sub/b.txt=s3 b\n"
        "./shared.txt=over file\n"
    ), show(task)
    environment = attempt["logs"][1]["stdout"]
    assert "AWS_" not in environment and "KUEUE_TES" not in environment, show(task)


def test_file_input_outside_the_roots_is_a_system_error(
    world: World, batch: dict[str, Json]
) -> None:
    """A file:// input outside the roots: SYSTEM_ERROR, a log naming the URL and the fix."""
    task = batch["outside_roots"]
    attempt = _final(task, "SYSTEM_ERROR")
    url = f"file://{world.tmp}/outside/secret.txt"
    expected = (
        f"input /in/secret.txt from {url}: {url} is outside the allowed roots ({world.roots}); "
        "ask the operator to add a root"
    )
    assert expected in attempt["system_logs"], show(task)
    assert attempt["logs"] == [], f"no executor may run:\n{show(task)}"


def test_glob_directory_and_missing_outputs(world: World, batch: dict[str, Json]) -> None:
    """Wildcards with path_prefix, DIRECTORY outputs flattened, missing outputs only noted."""
    task = batch["outputs"]
    attempt = _final(task, "COMPLETE")
    s3, dir_url = f"s3://{world.bucket}", f"file://{world.roots}/dir-out"
    assert _outputs_by_path(attempt) == {
        "/data/out/a.txt": (f"{s3}/glob/out/a.txt", "2"),
        "/data/out/b.txt": (f"{s3}/glob/out/b.txt", "3"),
        "/data/dir/x.txt": (f"{dir_url}/x.txt", "2"),
        "/data/dir/.hidden": (f"{dir_url}/.hidden", "2"),
        "/data/dir/nested/y.txt": (f"{dir_url}/nested/y.txt", "3"),
        "/data/dir/nested/deeper/z.txt": (f"{dir_url}/nested/deeper/z.txt", "4"),
    }, show(task)
    assert len(attempt["outputs"]) == 6, show(task)
    assert world.s3_objects("glob/") == {"glob/out/a.txt": b"a\n", "glob/out/b.txt": b"bb\n"}
    assert world.s3_objects("none") == {}
    assert _files(world.roots / "dir-out") == {
        ".hidden": "h\n",
        "x.txt": "x\n",
        "nested/y.txt": "yy\n",
        "nested/deeper/z.txt": "zzz\n",
    }
    assert not (world.roots / "missing.txt").exists()
    notes = attempt["system_logs"]
    assert "output /data/missing.txt not found; nothing uploaded" in notes, show(task)
    assert "output /data/out/*.none matched nothing; nothing uploaded" in notes, show(task)


# -- cancellation -------------------------------------------------------------------------------


def test_cancel_a_running_executor_leaves_no_process(world: World) -> None:
    """Cancel while an executor runs: CANCELING at once, then CANCELED, no process left."""
    server = world.server
    marker = f"marker-{uuid.uuid4().hex}"
    # A duration no other process has, so the sleep itself can be found from the host.
    duration = f"300.{uuid.uuid4().int % 10**6:06d}"
    task_id = server.create(
        {
            "name": "e2e-cancel",
            "executors": [
                {
                    "image": "alpine",
                    "command": ["sh", "-c", f"echo started; sleep {duration}; echo never", marker],
                }
            ],
        }
    )
    deadline = time.monotonic() + 60
    while not any(line == f"sleep {duration}" for _, line in processes_with(duration)):
        task = server.get(task_id)
        assert time.monotonic() < deadline, (
            f"the executor never started:\n{show(task)}\n{server.lines_about(task_id)}"
        )
        time.sleep(0.05)
    # The ready layout: RUNNING comes from the sequencer's report, read every 0.25 s here.
    while server.get(task_id)["state"] != "RUNNING":
        assert time.monotonic() < deadline, server.history[task_id]
        time.sleep(0.05)
    server.cancel(task_id)
    assert server.get(task_id)["state"] == "CANCELING", server.history[task_id]
    task = server.wait(task_id, timeout=30)
    assert server.history[task_id][-3:] == ["RUNNING", "CANCELING", "CANCELED"], server.history[
        task_id
    ]
    attempt = _final(task, "CANCELED")
    assert any("canceled" in line for line in attempt["system_logs"]), show(task)
    left = processes_with(marker) + processes_with(duration) + processes_with(f"tes-{task_id}")
    assert left == [], left


# -- admission against a quota ------------------------------------------------------------------


def test_a_task_waits_for_quota_with_kueues_reason(tmp_path: Path) -> None:
    """With 1 cpu of quota the second 1-cpu task stays QUEUED, saying why, then runs."""
    env = serve_env(
        {
            "KUEUE_TES_LOCAL_CPU": "1",
            # Our own containers request no cpu, so one 1-cpu task fills the quota exactly.
            "KUEUE_TES_SIDECAR_CPU": "0",
        }
    )
    task = {
        "resources": {"cpu_cores": 1},
        "executors": [{"image": "alpine", "command": ["sleep", "2"]}],
    }
    with serving(tmp_path / "data", env) as server:
        first = server.create({**task, "name": "first"})
        second = server.create({**task, "name": "second"})
        waiting: Json | None = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            one, two = server.get(first), server.get(second)
            if one["state"] in ("INITIALIZING", "RUNNING") and two["state"] == "QUEUED":
                waiting = two
            if two["state"] not in ("QUEUED", "INITIALIZING", "RUNNING"):
                break
            time.sleep(0.1)
        done = server.wait_all([first, second])
    assert waiting is not None, (server.history, show(done[second]))
    reason = (
        "waiting for Kueue: couldn't assign flavors to pod set main: insufficient unused quota "
        "for cpu in flavor local, 1 more needed"
    )
    assert reason in waiting["logs"][0]["system_logs"], show(waiting)
    one_attempt = _final(done[first], "COMPLETE")
    two_attempt = _final(done[second], "COMPLETE")
    assert server.history[second][:2] == ["QUEUED", "INITIALIZING"], server.history
    assert two_attempt["logs"][0]["start_time"] >= one_attempt["logs"][0]["end_time"]
