"""Filers against real servers on 127.0.0.1: HTTP, S3 (moto's server mode), FTP, and file://."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import ThreadedFTPServer

from app.models import FileType
from tests.conftest import free_port
from worker.sequencer.filers import (
    FilerConfig,
    TransferError,
    TransientError,
    filer_for,
    retrying,
    transfer_all,
    upload,
    write_content,
)
from worker.sequencer.filers.base import MIB, child_path, redact

FAST = FilerConfig(retries=2, backoff_seconds=0.01, timeout_seconds=5)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _closed_port() -> int:
    return free_port()  # nothing listens there once free_port returns


# -- retries, the pool, the registry, inline content ---------------------------------------


def test_retrying_retries_transient_errors_then_succeeds() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("server busy")
        return "done"

    assert retrying(flaky, FAST, "fetch x") == "done"
    assert len(calls) == 3


def test_retrying_gives_up_after_config_retries_with_a_message() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise TransientError("connection refused")

    with pytest.raises(TransferError) as caught:
        retrying(down, FAST, "fetch x")
    assert len(calls) == FAST.retries + 1
    assert not isinstance(caught.value, TransientError)  # nobody should retry it again
    assert str(caught.value) == "fetch x: gave up after 3 attempts: connection refused"


def test_retrying_does_not_retry_permanent_errors() -> None:
    calls: list[int] = []

    def wrong() -> None:
        calls.append(1)
        raise TransferError("no such key")

    with pytest.raises(TransferError, match="no such key"):
        retrying(wrong, FAST, "fetch x")
    assert len(calls) == 1


def test_transfer_all_keeps_order_bounds_threads_and_captures_errors() -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def job(n: int) -> Callable[[], int]:
        def run() -> int:
            with lock:
                running[0] += 1
                running[1] = max(running[1], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1
            if n == 2:
                raise TransferError("s3://b/2: no such key")
            if n == 3:
                raise KeyError("bug")
            return n * 10

        return run

    outcomes = transfer_all([job(n) for n in range(6)], max_workers=2)
    assert [o.value for o in outcomes] == [0, 10, None, None, 40, 50]
    assert [o.ok for o in outcomes] == [True, True, False, False, True, True]
    assert str(outcomes[2].error) == "s3://b/2: no such key"
    assert str(outcomes[3].error) == "unexpected KeyError: 'bug'"
    assert running[1] == 2
    assert transfer_all([], 4) == []


def test_unsupported_scheme_names_the_supported_ones() -> None:
    with pytest.raises(TransferError) as caught:
        filer_for("gopher://example.org/x", FAST)
    assert str(caught.value) == (
        "unsupported URL scheme 'gopher' in gopher://example.org/x; "
        "this service supports: content, file, http, https, s3, ftp"
    )
    with pytest.raises(TransferError, match="unsupported URL scheme"):
        filer_for("/plain/path", FAST)
    # One filer per scheme and config, shared: building an S3 client is not cheap.
    assert filer_for("http://a/x", FAST) is filer_for("https://b/y", FAST)
    assert filer_for("http://a/x", FAST) is not filer_for("http://a/x", replace(FAST, retries=0))


def test_redact_hides_passwords() -> None:
    assert redact("ftp://alice:secret@h:21/x") == "ftp://alice:***@h:21/x"
    assert redact("ftp://alice@h/x") == "ftp://alice@h/x"
    assert redact("s3://b/k") == "s3://b/k"


def test_child_path_refuses_to_climb_out(tmp_path: Path) -> None:
    assert child_path(tmp_path, "a/./b", "s3://b/p") == tmp_path / "a" / "b"
    with pytest.raises(TransferError, match="outside"):
        child_path(tmp_path, "a/../../etc/passwd", "s3://b/p")


def test_write_content_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    dest = tmp_path / "deep" / "script.sh"
    old = os.umask(0o077)
    try:
        write_content("echo héllo\n", dest)
    finally:
        os.umask(old)
    assert dest.read_text(encoding="utf-8") == "echo héllo\n"
    assert dest.stat().st_mode & 0o777 == 0o644


# -- file:// ---------------------------------------------------------------------------------


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Path, Path, FilerConfig]:
    """A shared-filesystem root with a small tree, a secret outside it, and a config."""
    root = tmp_path / "shared"
    (root / "ref" / "sub").mkdir(parents=True)
    (root / "ref" / "a.txt").write_text("a")
    (root / "ref" / "sub" / "b.txt").write_text("b")
    (root / "tool.sh").write_text("#!/bin/sh\n")
    (root / "tool.sh").chmod(0o755)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not leak")
    return root, secret, replace(FAST, file_roots=(str(root),))


def test_file_download_file_and_directory_inside_roots(
    shared: tuple[Path, Path, FilerConfig], tmp_path: Path
) -> None:
    root, _, config = shared
    (root / "ref" / "link.txt").symlink_to(root / "tool.sh")  # inside the root: followed
    filer = filer_for(f"file://{root}/tool.sh", config)
    filer.download(f"file://{root}/tool.sh", tmp_path / "w" / "tool.sh", FileType.FILE)
    assert (tmp_path / "w" / "tool.sh").read_text() == "#!/bin/sh\n"
    assert (tmp_path / "w" / "tool.sh").stat().st_mode & 0o111  # scripts stay executable
    filer.download(f"file://{root}/ref/", tmp_path / "w" / "ref", FileType.DIRECTORY)
    assert _tree(tmp_path / "w" / "ref") == {
        "a.txt": b"a",
        "link.txt": b"#!/bin/sh\n",
        "sub/b.txt": b"b",
    }


def test_file_upload_creates_directories_under_the_root(
    shared: tuple[Path, Path, FilerConfig], tmp_path: Path
) -> None:
    root, _, config = shared
    src = tmp_path / "result.txt"
    src.write_text("42")
    filer_for("file:///x", config).upload(src, f"file://{root}/out/run1/result.txt")
    assert (root / "out" / "run1" / "result.txt").read_text() == "42"


@pytest.mark.parametrize(
    "where",
    ["/etc/passwd", "{root}/../secret.txt", "{root}/escape.txt", "{root}/dir-escape/secret.txt"],
)
def test_file_outside_roots_is_refused(
    shared: tuple[Path, Path, FilerConfig], tmp_path: Path, where: str
) -> None:
    root, secret, config = shared
    (root / "escape.txt").symlink_to(secret)
    (root / "dir-escape").symlink_to(secret.parent)
    url = "file://" + where.format(root=root)
    with pytest.raises(TransferError) as caught:
        filer_for(url, config).download(url, tmp_path / "w" / "x", FileType.FILE)
    assert str(caught.value) == (
        f"{url} is outside the allowed roots ({root}); ask the operator to add a root"
    )
    assert not (tmp_path / "w" / "x").exists()
    with pytest.raises(TransferError, match="outside the allowed roots"):
        filer_for(url, config).upload(secret, url)


def test_file_directory_with_a_link_out_of_the_root_is_refused(
    shared: tuple[Path, Path, FilerConfig], tmp_path: Path
) -> None:
    root, secret, config = shared
    (root / "ref" / "sub" / "leak.txt").symlink_to(secret)
    with pytest.raises(TransferError, match="outside the allowed roots"):
        filer_for("file:///", config).download(
            f"file://{root}/ref", tmp_path / "w", FileType.DIRECTORY
        )
    assert not (tmp_path / "w" / "sub" / "leak.txt").exists()


def test_file_errors_say_what_is_wrong(
    shared: tuple[Path, Path, FilerConfig], tmp_path: Path
) -> None:
    root, _, config = shared
    filer = filer_for("file:///", config)
    with pytest.raises(TransferError, match="no such file"):
        filer.download(f"file://{root}/missing.txt", tmp_path / "x", FileType.FILE)
    with pytest.raises(TransferError, match="declare the input as DIRECTORY"):
        filer.download(f"file://{root}/ref", tmp_path / "x", FileType.FILE)
    with pytest.raises(TransferError, match="drop the host"):
        filer.download(f"file://server{root}/tool.sh", tmp_path / "x", FileType.FILE)
    with pytest.raises(TransferError, match=r"none configured"):
        filer_for("file:///", FAST).download(
            f"file://{root}/tool.sh", tmp_path / "x", FileType.FILE
        )


# -- http(s) ---------------------------------------------------------------------------------


@dataclass
class HttpState:
    """What the test HTTP server serves, and what it saw."""

    root: Path
    fail_next: int = 0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _http_handler(state: HttpState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _failing(self) -> bool:
            with state.lock:
                state.requests.append((self.command, self.path, self.headers.get("Authorization")))
                if state.fail_next > 0:
                    state.fail_next -= 1
                    return True
            return False

        def do_GET(self) -> None:
            if self._failing():
                self._reply(500, b"try later")
                return
            path = state.root / self.path.lstrip("/")
            if path.is_file():
                self._reply(200, path.read_bytes())
            else:
                self._reply(404, b"not here")

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self._failing():
                self._reply(500, b"try later")
                return
            path = state.root / self.path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            self._reply(201)

    return Handler


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, HttpState]]:
    """A threading HTTP server on 127.0.0.1 serving and accepting files under a tmp dir."""
    state = HttpState(tmp_path / "www")
    (state.root / "data").mkdir(parents=True)
    (state.root / "data" / "reads.fq").write_bytes(b"@r1\nACGT\n+\nIIII\n" * 1000)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_http_download_streams_to_disk(http_server: tuple[str, HttpState], tmp_path: Path) -> None:
    base, state = http_server
    dest = tmp_path / "in" / "reads.fq"
    filer_for(base, FAST).download(f"{base}/data/reads.fq", dest, FileType.FILE)
    assert dest.read_bytes() == (state.root / "data" / "reads.fq").read_bytes()
    assert not list(dest.parent.glob(".*.part"))


def test_http_404_is_permanent_with_the_status(
    http_server: tuple[str, HttpState], tmp_path: Path
) -> None:
    base, state = http_server
    with pytest.raises(TransferError) as caught:
        filer_for(base, FAST).download(f"{base}/nope.txt", tmp_path / "x", FileType.FILE)
    assert not isinstance(caught.value, TransientError)
    assert str(caught.value).startswith(f"{base}/nope.txt: HTTP 404")
    assert len(state.requests) == 1
    assert not (tmp_path / "x").exists()


def test_http_500_is_retried_then_succeeds(
    http_server: tuple[str, HttpState], tmp_path: Path
) -> None:
    base, state = http_server
    state.fail_next = 2
    dest = tmp_path / "reads.fq"
    config = replace(FAST, retries=4)
    filer_for(base, config).download(f"{base}/data/reads.fq", dest, FileType.FILE)
    assert dest.stat().st_size == (state.root / "data" / "reads.fq").stat().st_size
    assert len(state.requests) == 3


def test_http_500_gives_up_after_the_configured_retries(
    http_server: tuple[str, HttpState], tmp_path: Path
) -> None:
    base, state = http_server
    state.fail_next = 100
    url = f"{base}/data/reads.fq"
    with pytest.raises(TransferError) as caught:
        filer_for(base, FAST).download(url, tmp_path / "x", FileType.FILE)
    assert str(caught.value) == (
        f"download {url}: gave up after 3 attempts: {url}: HTTP 500 Internal Server Error"
    )
    assert len(state.requests) == 3


def test_http_unreachable_is_transient_then_gives_up(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x"
    with pytest.raises(TransferError, match=r"gave up after 3 attempts: .*cannot connect"):
        filer_for(url, FAST).download(url, tmp_path / "x", FileType.FILE)


def test_http_directory_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="DIRECTORY inputs cannot be fetched over http"):
        filer_for("https://h/d/", FAST).download("https://h/d/", tmp_path, FileType.DIRECTORY)


def test_http_put_only_when_enabled(http_server: tuple[str, HttpState], tmp_path: Path) -> None:
    base, state = http_server
    src = tmp_path / "out.txt"
    src.write_bytes(b"result\n" * 100)
    with pytest.raises(TransferError, match="enable HTTP PUT"):
        filer_for(base, FAST).upload(src, f"{base}/up/out.txt")
    assert state.requests == []
    state.fail_next = 1  # and a PUT is retried like a GET
    filer_for(base, replace(FAST, http_put=True)).upload(src, f"{base}/up/out.txt")
    assert (state.root / "up" / "out.txt").read_bytes() == src.read_bytes()
    assert [r[0] for r in state.requests] == ["PUT", "PUT"]


def test_http_credentials_in_the_url_are_sent_and_never_shown(
    http_server: tuple[str, HttpState], tmp_path: Path
) -> None:
    base, state = http_server
    url = base.replace("http://", "http://bob:s%40cret@") + "/missing"
    with pytest.raises(TransferError) as caught:
        filer_for(url, FAST).download(url, tmp_path / "x", FileType.FILE)
    assert "cret" not in str(caught.value)
    assert "bob:***@" in str(caught.value)
    assert state.requests[0][2] == "Basic Ym9iOnNAY3JldA=="  # bob:s@cret


# -- s3 (moto server) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port for this module."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class S3Env:
    """A fresh bucket on the moto server, a client for the test and a filer config."""

    config: FilerConfig
    client: Any
    bucket: str


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Env:
    """A new bucket, with dummy credentials in the environment as the storage Secret gives."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    config = replace(
        FAST,
        s3_endpoint_url=moto_endpoint,
        s3_region="us-east-1",
        s3_path_style=True,
        multipart_threshold_bytes=5 * MIB,
    )
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"tes-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Env(config, client, bucket)


def test_s3_file_download(s3: S3Env, tmp_path: Path) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="ref/genome.fa", Body=b">chr1\nACGT\n")
    dest = tmp_path / "in" / "genome.fa"
    filer_for("s3://x", s3.config).download(f"s3://{s3.bucket}/ref/genome.fa", dest, FileType.FILE)
    assert dest.read_bytes() == b">chr1\nACGT\n"


def test_s3_directory_is_a_prefix(s3: S3Env, tmp_path: Path) -> None:
    objects = {
        "run/a.txt": b"a",
        "run/sub/b.txt": b"b",
        "run/sub/deeper/c.txt": b"c",
        "run/empty/": b"",  # a console's folder marker
        "runner/not-mine.txt": b"x",  # shares the letters, not the prefix
    }
    for key, body in objects.items():
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=body)
    dest = tmp_path / "run"
    filer = filer_for("s3://x", s3.config)
    filer.download(f"s3://{s3.bucket}/run", dest, FileType.DIRECTORY)
    assert _tree(dest) == {"a.txt": b"a", "sub/b.txt": b"b", "sub/deeper/c.txt": b"c"}
    assert (dest / "empty").is_dir()
    with pytest.raises(TransferError, match="no objects under this prefix"):
        filer.download(f"s3://{s3.bucket}/nothing/", tmp_path / "n", FileType.DIRECTORY)


def test_s3_upload_small_and_multipart(s3: S3Env, tmp_path: Path) -> None:
    filer = filer_for("s3://x", s3.config)
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello")
    filer.upload(small, f"s3://{s3.bucket}/out/small.txt")
    head = s3.client.head_object(Bucket=s3.bucket, Key="out/small.txt")
    assert head["ContentLength"] == 5
    assert "-" not in head["ETag"]

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * MIB))  # above the lowered 5 MiB threshold
    filer.upload(big, f"s3://{s3.bucket}/out/big.bin")
    head = s3.client.head_object(Bucket=s3.bucket, Key="out/big.bin")
    assert head["ContentLength"] == 6 * MIB
    assert re.search(r"-\d+\"?$", head["ETag"]), head["ETag"]  # a multipart ETag
    back = tmp_path / "back.bin"
    filer.download(f"s3://{s3.bucket}/out/big.bin", back, FileType.FILE)
    assert back.read_bytes() == big.read_bytes()


def test_s3_parallel_uploads_share_one_filer(s3: S3Env, tmp_path: Path) -> None:
    sources = []
    for n in range(8):
        sources.append(tmp_path / f"f{n}.txt")
        sources[-1].write_text(str(n))
    jobs = [
        lambda src=src: upload(src, f"s3://{s3.bucket}/par/{src.name}", s3.config)
        for src in sources
    ]
    assert all(outcome.ok for outcome in transfer_all(jobs, max_workers=4))
    listed = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="par/")["Contents"]
    assert sorted(item["Key"] for item in listed) == [f"par/f{n}.txt" for n in range(8)]


def test_s3_missing_key_and_bucket_are_permanent_and_clear(s3: S3Env, tmp_path: Path) -> None:
    filer = filer_for("s3://x", s3.config)
    with pytest.raises(TransferError) as caught:
        filer.download(f"s3://{s3.bucket}/nope.txt", tmp_path / "x", FileType.FILE)
    assert str(caught.value) == f"s3://{s3.bucket}/nope.txt: no such key"
    with pytest.raises(TransferError) as caught:
        filer.download("s3://no-such-bucket-here/k", tmp_path / "x", FileType.FILE)
    assert str(caught.value) == "s3://no-such-bucket-here: no such bucket"
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(TransferError, match="s3://no-such-bucket-here: no such bucket"):
        filer.upload(src, "s3://no-such-bucket-here/k")
    with pytest.raises(TransferError, match="not an object"):
        filer.download(f"s3://{s3.bucket}", tmp_path / "x", FileType.FILE)


def test_s3_unreachable_endpoint_is_retried_then_reported(s3: S3Env, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    config = replace(s3.config, s3_endpoint_url=endpoint, retries=1)
    with pytest.raises(TransferError) as caught:
        filer_for("s3://x", config).download("s3://b/k", tmp_path / "x", FileType.FILE)
    assert str(caught.value).startswith(
        f"download s3://b/k: gave up after 2 attempts: s3://b/k: cannot reach {endpoint}"
    )


# -- ftp -------------------------------------------------------------------------------------


@pytest.fixture
def ftp_server(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """Start pyftpdlib servers on 127.0.0.1: alice/secret owns a tmp dir; anonymous reads."""
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    running: list[tuple[ThreadedFTPServer, threading.Thread, threading.Event]] = []

    def start(mlsd: bool = True) -> tuple[str, Path]:
        home = tmp_path / f"ftp-{len(running)}"
        home.mkdir()
        authorizer = DummyAuthorizer()
        authorizer.add_user("alice", "secret", str(home), perm="elradfmwMT")
        authorizer.add_anonymous(str(home))
        commands = dict(FTPHandler.proto_cmds)
        if not mlsd:
            del commands["MLSD"]  # an older server: the filer must fall back to NLST
        # auth_failed_timeout: pyftpdlib pauses 3 s after a bad password; not in tests.
        attributes = {"authorizer": authorizer, "proto_cmds": commands, "auth_failed_timeout": 0.01}
        handler = type("Handler", (FTPHandler,), attributes)
        server = ThreadedFTPServer(("127.0.0.1", 0), handler)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                server.serve_forever(timeout=0.02, blocking=False, handle_exit=False)
            server.close_all()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        running.append((server, thread, stop))
        return f"127.0.0.1:{server.address[1]}", home

    yield start
    for _, thread, stop in running:
        stop.set()
        thread.join(5)


def _ftp_tree(home: Path) -> None:
    (home / "data" / "sub" / "deeper").mkdir(parents=True)
    (home / "data" / "a.txt").write_bytes(b"a")
    (home / "data" / "sub" / "b.txt").write_bytes(b"b")
    (home / "data" / "sub" / "deeper" / "c.txt").write_bytes(b"c" * 100_000)
    (home / "data" / "empty").mkdir()


def test_ftp_file_download_with_user_and_anonymous(
    ftp_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    host, home = ftp_server()
    _ftp_tree(home)
    filer = filer_for("ftp://x", FAST)
    filer.download(f"ftp://alice:secret@{host}/data/a.txt", tmp_path / "a.txt", FileType.FILE)
    filer.download(f"ftp://{host}/data/sub/b.txt", tmp_path / "in" / "b.txt", FileType.FILE)
    assert (tmp_path / "a.txt").read_bytes() == b"a"
    assert (tmp_path / "in" / "b.txt").read_bytes() == b"b"


@pytest.mark.parametrize("mlsd", [True, False], ids=["mlsd", "nlst"])
def test_ftp_directory_download_is_recursive(
    ftp_server: Callable[..., tuple[str, Path]], tmp_path: Path, mlsd: bool
) -> None:
    host, home = ftp_server(mlsd=mlsd)
    _ftp_tree(home)
    dest = tmp_path / "data"
    url = f"ftp://alice:secret@{host}/data"
    filer_for(url, FAST).download(url, dest, FileType.DIRECTORY)
    assert _tree(dest) == {"a.txt": b"a", "sub/b.txt": b"b", "sub/deeper/c.txt": b"c" * 100_000}
    assert (dest / "empty").is_dir()


def test_ftp_upload_creates_directories(
    ftp_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    host, home = ftp_server()
    src = tmp_path / "out.txt"
    src.write_bytes(b"result")
    url = f"ftp://alice:secret@{host}/results/run1/out.txt"
    filer_for(url, FAST).upload(src, url)
    filer_for(url, FAST).upload(src, f"ftp://alice:secret@{host}/results/run1/again.txt")
    assert (home / "results" / "run1" / "out.txt").read_bytes() == b"result"
    assert (home / "results" / "run1" / "again.txt").read_bytes() == b"result"


def test_ftp_errors_are_clear(ftp_server: Callable[..., tuple[str, Path]], tmp_path: Path) -> None:
    host, home = ftp_server()
    _ftp_tree(home)
    filer = filer_for("ftp://x", FAST)
    with pytest.raises(TransferError) as caught:
        filer.download(f"ftp://alice:secret@{host}/nope.txt", tmp_path / "x", FileType.FILE)
    assert not isinstance(caught.value, TransientError)
    assert str(caught.value).startswith(f"ftp://alice:***@{host}/nope.txt: 550")
    with pytest.raises(TransferError, match=r"login refused \(530.*check the user and password"):
        filer.download(f"ftp://alice:wrong@{host}/data/a.txt", tmp_path / "x", FileType.FILE)
    with pytest.raises(TransferError, match=r"gave up after 3 attempts: .*connection failed"):
        filer.download(f"ftp://127.0.0.1:{_closed_port()}/x", tmp_path / "x", FileType.FILE)
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(TransferError, match="550"):
        filer.upload(src, f"ftp://{host}/anonymous-cannot-write.txt")
