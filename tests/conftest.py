"""Shared fixtures: settings, a real redis-server, stores, and the API's test client."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """Return a TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed (.ci/run installs it with apt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a real redis-server on a free loopback port for the whole session."""
    binary = _need("redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[str]:
    """The session's redis-server, flushed before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings confined to ``tmp_path``, with overrides."""
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "mongo_uri": None, "redis_url": None}
    values.update(overrides)
    return Settings(**values)
