"""What the benchmarks share: servers as subprocesses, load generators, latency, tables."""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def note(message: str) -> None:
    """Print progress to stderr, so stdout holds only the tables."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """Return a TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- processes --------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a process we started (and its session, which only it created) by its id."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Run a throwaway redis-server on a free loopback port; yield its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    log = workdir / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((HOST, port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{_tail(log)}")
            time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0"
    finally:
        _stop(proc)


@contextmanager
def gunicorn_server(
    target: str, workdir: Path, env: dict[str, str], ready_path: str
) -> Iterator[int]:
    """Run ``python -m tests.benchmarks.launch <target>`` on a free port; yield the port."""
    port = free_port()
    log = workdir / f"{target}-{port}.log"
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("KUEUE_TES")}
    full_env.update(env, KUEUE_TES_HOST=HOST, KUEUE_TES_PORT=str(port))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.launch", target],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = request(port, "GET", ready_path)
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{target} server did not start; its log:\n{_tail(log)}")
            time.sleep(0.1)
        yield port
    finally:
        _stop(proc)


# -- HTTP ---------------------------------------------------------------------------------------


def request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Send one request on a new connection; return the status and the decoded JSON body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


@dataclass(frozen=True)
class Latency:
    """Wall times of sequential requests on one keep-alive connection, in seconds."""

    samples: list[float]
    body: Any  # the last response's decoded body

    @property
    def median(self) -> float:
        """The median wall time."""
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        """The 90th percentile wall time."""
        return statistics.quantiles(self.samples, n=10, method="inclusive")[-1]


def latency(
    port: int, *paths: str, count: int = 200, block: int = 10, max_seconds: float = 2.5
) -> list[Latency]:
    """Time ``count`` sequential GETs of each of ``paths`` on one keep-alive connection.

    The paths take turns in blocks of ``block`` requests, so a path and its reference see the
    same background load, while the first request of a block, which may pay for the previous
    path's garbage, stays out of the median. The first round warms up and is not timed; fewer
    requests are timed if ``max_seconds`` runs out first (never fewer than 20).
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    samples: list[list[float]] = [[] for _ in paths]
    bodies: list[bytes] = [b"" for _ in paths]
    deadline = float("inf")
    warming = True
    try:
        while len(samples[0]) < count:
            for j, path in enumerate(paths):
                for _ in range(block):
                    start = time.perf_counter()
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    bodies[j] = resp.read()
                    elapsed = time.perf_counter() - start
                    if resp.status != 200:
                        raise RuntimeError(f"GET {path}: HTTP {resp.status}: {bodies[j][:300]!r}")
                    if not warming:
                        samples[j].append(elapsed)
            if warming:
                warming, deadline = False, time.perf_counter() + max_seconds
            elif time.perf_counter() > deadline and len(samples[0]) >= 20:
                break
    finally:
        conn.close()
    return [Latency(samples=s, body=json.loads(b)) for s, b in zip(samples, bodies, strict=True)]


# -- load generators ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """The outcome of one throughput run."""

    rps: float
    errors: int  # non-2xx responses and socket errors
    p50: float | None = None  # latency percentiles in seconds, where the generator tells
    p99: float | None = None


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _percentile(out: str, pct: int) -> float | None:
    """Read one percentile of wrk's --latency distribution, in seconds."""
    found = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
    return None if found is None else float(found.group(1)) * _UNITS[found.group(2)]


class LoadGenerator:
    """Drive one URL with concurrent keep-alive connections for a fixed time."""

    label = ""

    def __init__(self, connections: int, duration: float, warmup: float) -> None:
        """Remember the concurrency, the measured duration and the warm-up (seconds)."""
        self.connections = connections
        self.duration = duration
        self.warmup = warmup

    def run(self, port: int, method: str, path: str, body: Any = None) -> Load:
        """Warm up, then measure requests per second."""
        self._run(port, method, path, body, self.warmup)
        return self._run(port, method, path, body, self.duration)

    def _run(self, port: int, method: str, path: str, body: Any, seconds: float) -> Load:
        raise NotImplementedError


class Wrk(LoadGenerator):
    """wrk, one thread (the machine's other cores serve)."""

    def __init__(self, binary: str, connections: int, duration: float, warmup: float) -> None:
        """Use the wrk at ``binary``."""
        super().__init__(connections, duration, warmup)
        self.binary = binary
        version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
        first = (version.stdout or version.stderr).splitlines()[:1]
        self.label = (
            f"{first[0].split('[')[0].strip() if first else 'wrk'} "
            f"(-t1 -c{connections} -d{duration:g}s after a {warmup:g} s warm-up)"
        )

    def _run(self, port: int, method: str, path: str, body: Any, seconds: float) -> Load:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(f'wrk.method = "{method}"\n')
            if body is not None:
                script.write(f"wrk.body = [[{json.dumps(body)}]]\n")
                script.write('wrk.headers["Content-Type"] = "application/json"\n')
        try:
            out = subprocess.run(
                [self.binary, "-t1", f"-c{self.connections}", f"-d{seconds:g}s", "--latency",
                 "-s", script.name, f"http://{HOST}:{port}{path}"],
                capture_output=True, text=True, check=True, timeout=seconds + 30,
            ).stdout  # fmt: skip
        finally:
            os.unlink(script.name)
        rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
        if rps is None:
            raise RuntimeError(f"cannot read wrk's output:\n{out}")
        errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s*(\d+)", out))
        socket_errors = re.search(r"Socket errors:(.*)", out)
        if socket_errors:
            errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
        p50, p99 = _percentile(out, 50), _percentile(out, 99)
        return Load(rps=float(rps.group(1)), errors=errors, p50=p50, p99=p99)


class PythonLoad(LoadGenerator):
    """Threads with http.client keep-alive connections: bounded by the GIL, so it may
    saturate before the server does, which pulls every ratio towards 1."""

    def __init__(self, connections: int, duration: float, warmup: float) -> None:
        """Use one thread per connection."""
        super().__init__(connections, duration, warmup)
        self.label = (
            f"Python threads + http.client ({connections} keep-alive connections, "
            f"{duration:g} s after a {warmup:g} s warm-up; wrk not found)"
        )

    def _run(self, port: int, method: str, path: str, body: Any, seconds: float) -> Load:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        counts = [0] * self.connections
        errors = [0] * self.connections
        times: list[list[float]] = [[] for _ in range(self.connections)]
        start = time.perf_counter()
        deadline = start + seconds

        def drive(slot: int) -> None:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            try:
                while (sent := time.perf_counter()) < deadline:
                    try:
                        conn.request(method, path, body=data, headers=headers)
                        resp = conn.getresponse()
                        resp.read()
                    except (OSError, http.client.HTTPException):
                        errors[slot] += 1
                        conn.close()
                        continue
                    times[slot].append(time.perf_counter() - sent)
                    if 200 <= resp.status < 300:
                        counts[slot] += 1
                    else:
                        errors[slot] += 1
            finally:
                conn.close()

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(self.connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rps = sum(counts) / (time.perf_counter() - start)
        every = sorted(t for slot in times for t in slot)
        if len(every) < 2:
            return Load(rps=rps, errors=sum(errors))
        cuts = statistics.quantiles(every, n=100, method="inclusive")
        return Load(rps=rps, errors=sum(errors), p50=cuts[49], p99=cuts[98])


def load_generator(connections: int, duration: float, warmup: float) -> LoadGenerator:
    """Return wrk if it is installed, else the Python fallback."""
    binary = shutil.which("wrk")
    if binary:
        return Wrk(binary, connections, duration, warmup)
    return PythonLoad(connections, duration, warmup)


# -- reporting ----------------------------------------------------------------------------------


def machine() -> str:
    """Describe the machine in one line."""
    return (
        f"nproc={os.cpu_count()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}"
    )


@dataclass(frozen=True)
class Row:
    """One line of a result table; ``ok`` is None where there is no target."""

    name: str
    value: str
    reference: str = "-"
    ratio: str = "-"
    target: str = "-"
    ok: bool | None = None


def table(title: str, rows: list[Row]) -> str:
    """Render rows as a plain fixed-width table under ``title``."""
    head = ("name", "value", "reference", "ratio", "target", "ok?")
    cells = [head] + [
        (
            r.name,
            r.value,
            r.reference,
            r.ratio,
            r.target,
            {None: "-", True: "yes", False: "NO"}[r.ok],
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(head))]

    def fmt(line: tuple[str, ...]) -> str:
        parts = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        return " | ".join(parts).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([title, fmt(head), rule, *(fmt(line) for line in cells[1:])])
