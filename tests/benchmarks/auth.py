"""The cost of authentication: GetTask with OIDC on against auth off, through gunicorn, and
ListTasks under an owner filter against an admin's unfiltered listing.

The identity provider is ``tests/idp.py`` (a real discovery document and JWKS on loopback) in
this process; the servers fetch its keys once at start, so the hot path has no network.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app import auth
from app.settings import Settings
from tests.benchmarks import seed
from tests.benchmarks.api import CREATE_BODY, SERVICE_INFO, TASKS
from tests.benchmarks.harness import (
    HOST,
    Load,
    LoadGenerator,
    Row,
    Wrk,
    gunicorn_server,
    note,
    redis_server,
)
from tests.idp import AUDIENCE, IdentityProvider

MAX_AUTH_COST = 0.20  # the target: validation costs under 20% of GetTask
MAX_OWNER_RATIO = 1.5  # an owner's listing against an admin's of the same query
OTHER_OWNER = "someone-else"
Headers = dict[str, str]


def _oidc_env(provider: IdentityProvider, **extra: str) -> dict[str, str]:
    return {
        "KUEUE_TES_AUTH": "oidc",
        "KUEUE_TES_OIDC_ISSUER": provider.issuer,
        "KUEUE_TES_OIDC_AUDIENCE": AUDIENCE,
        **extra,
    }


def _send(port: int, method: str, path: str, headers: Headers, body: object = None) -> object:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = dict(headers, **({"Content-Type": "application/json"} if data else {}))
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
        return json.loads(raw)
    finally:
        conn.close()


# -- load with headers (the harness's generators send none) -------------------------------------


def _wrk(gen: Wrk, port: int, path: str, headers: Headers, seconds: float) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "GET"\n')
        for key, value in headers.items():
            script.write(f'wrk.headers["{key}"] = "{value}"\n')
    try:
        out = subprocess.run(
            [gen.binary, "-t1", f"-c{gen.connections}", f"-d{seconds:g}s", "-s", script.name,
             f"http://{HOST}:{port}{path}"],
            capture_output=True, text=True, check=True, timeout=seconds + 30,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    rps = float(out.split("Requests/sec:")[1].split()[0])
    errors = sum(int(line.split(":")[1]) for line in out.splitlines() if "Non-2xx" in line)
    return Load(rps=rps, errors=errors)


def _threads(gen: LoadGenerator, port: int, path: str, headers: Headers, seconds: float) -> Load:
    counts, errors = [0] * gen.connections, [0] * gen.connections
    deadline = time.perf_counter() + seconds

    def drive(slot: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            while time.perf_counter() < deadline:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    counts[slot] += 1
                else:
                    errors[slot] += 1
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=drive, args=(i,)) for i in range(gen.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Load(rps=sum(counts) / (time.perf_counter() - start), errors=sum(errors))


def _load(gen: LoadGenerator, port: int, path: str, headers: Headers) -> Load:
    run = _wrk if isinstance(gen, Wrk) else _threads
    run(gen, port, path, headers, gen.warmup)  # type: ignore[arg-type]
    return run(gen, port, path, headers, gen.duration)  # type: ignore[arg-type]


# -- GetTask ------------------------------------------------------------------------------------


def _cost_row(name: str, load: Load, reference: Load | None, targeted: bool) -> Row:
    value = f"{load.rps:,.0f} req/s" + (f" ({load.errors} errors)" if load.errors else "")
    if reference is None:
        return Row(name, value, ok=None if not load.errors else False)
    # Per-request time with auth over that without, minus one: what auth adds to a GetTask.
    cost = reference.rps / load.rps - 1
    return Row(
        name,
        value,
        reference=f"{reference.rps:,.0f} req/s",
        ratio=f"cost {cost:+.0%}",
        target=f"< {MAX_AUTH_COST:.0%}" if targeted else "-",
        ok=(cost < MAX_AUTH_COST and not load.errors) if targeted else None,
    )


def _latencies(targets: list[tuple[int, str, Headers]], count: int = 600) -> list[list[float]]:
    """Wall times of sequential GETs, one keep-alive connection per target, taking turns in
    blocks of 10 so that all see the same background load; a block's first request (which
    may pay for the previous target's garbage) and a first warm-up round are not counted."""
    conns = [http.client.HTTPConnection(HOST, port, timeout=30) for port, _, _ in targets]
    samples: list[list[float]] = [[] for _ in targets]
    try:
        for block in range(count // 10 + 1):
            for conn, (_, path, headers), out in zip(conns, targets, samples, strict=True):
                for i in range(10):
                    start = time.perf_counter()
                    conn.request("GET", path, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    elapsed = time.perf_counter() - start
                    if resp.status != 200:
                        raise RuntimeError(f"GET {path}: HTTP {resp.status}")
                    if block and i:
                        out.append(elapsed)
    finally:
        for conn in conns:
            conn.close()
    return samples


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e6:.0f} us (n={len(samples)})"


def _latency_row(name: str, samples: list[float], reference: list[float], targeted: bool) -> Row:
    cost = statistics.median(samples) / statistics.median(reference) - 1
    return Row(
        name,
        _ms(samples),
        reference=f"{statistics.median(reference) * 1e6:.0f} us",
        ratio=f"cost {cost:+.0%}",
        target=f"< {MAX_AUTH_COST:.0%}" if targeted else "-",
        ok=cost < MAX_AUTH_COST if targeted else None,
    )


def _in_process(provider: IdentityProvider) -> list[Row]:
    """Time the two paths of app.auth in this process: the remembered token and a full check."""
    settings = Settings(auth="oidc", oidc_issuer=provider.issuer, oidc_audience=[AUDIENCE])
    authenticator = auth.Authenticator(settings)
    header = f"Bearer {provider.token('alice')}".encode()
    authenticator.authenticate(header)
    rows = []
    verifier = authenticator.oidc
    assert verifier is not None
    token = header.split(b" ")[1].decode()
    calls: dict[str, Callable[[], object]] = {
        "in process: auth.cached (remembered token)": lambda: authenticator.cached(header),
        "in process: full RS256 check (new token)": lambda: verifier.verify(token),
    }
    for label, call in calls.items():
        samples = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(500):
                call()
            samples.append((time.perf_counter() - start) / 500)
        rows.append(Row(label, f"{statistics.median(samples) * 1e6:.1f} us/request"))
    return rows


def gettask(gen: LoadGenerator, workers: int, rounds: int) -> list[Row]:
    """GetTask MINIMAL req/s: auth none, OIDC with its cache, OIDC checking every request.

    The three servers run side by side and take turns for ``rounds`` rounds; each keeps its
    best round. The same token is sent on every request, as a polling client does.
    """
    with (
        tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp,
        IdentityProvider() as provider,
    ):
        work = Path(tmp)
        provider.add_key("bench-rsa")
        token = {"Authorization": f"Bearer {provider.token('alice')}"}
        with redis_server(work) as redis_url:
            env = {"KUEUE_TES_REDIS_URL": redis_url, "KUEUE_TES_WORKERS": str(workers)}
            plan: dict[str, tuple[dict[str, str], Headers]] = {
                "GetTask MINIMAL, auth none (reference)": ({}, {}),
                "GetTask MINIMAL, auth none, token sent (ignored)": ({}, token),
                "GetTask MINIMAL, OIDC (RS256, the token remembered)": (_oidc_env(provider), token),
                "GetTask MINIMAL, OIDC, KUEUE_TES_AUTH_CACHE_SECONDS=0": (
                    _oidc_env(provider, KUEUE_TES_AUTH_CACHE_SECONDS="0"),
                    token,
                ),
            }
            ports: dict[str, tuple[int, str]] = {}
            with contextlib.ExitStack() as servers:
                for i, (name, (extra, headers)) in enumerate(plan.items()):
                    data = {"KUEUE_TES_DATA_DIR": str(work / f"data-{i}")}
                    server = gunicorn_server("tes", work, env | data | extra, SERVICE_INFO)
                    port = servers.enter_context(server)
                    created = _send(port, "POST", TASKS, headers, CREATE_BODY)
                    path = f"{TASKS}/{created['id']}"  # type: ignore[index]
                    _send(port, "GET", path, headers)
                    ports[name] = (port, path)
                best: dict[str, Load] = {}
                for i in range(rounds):
                    for name, (port, path) in ports.items():
                        note(f"auth: {name}, round {i + 1} of {rounds}")
                        load = _load(gen, port, path, plan[name][1])
                        seen = best.get(name)
                        best[name] = Load(
                            rps=max(load.rps, seen.rps if seen else 0.0),
                            errors=load.errors + (seen.errors if seen else 0),
                        )
                note("auth: GetTask latency, the servers taking turns")
                lat = _latencies([ports[name] + (plan[name][1],) for name in plan])
        names = list(best)
        reference = best[names[0]]
        rows = [_cost_row(names[0], reference, None, False)]
        rows += [
            _cost_row(n, best[n], reference, targeted=i == 2) for i, n in enumerate(names) if i
        ]
        rows.append(Row(f"latency: {names[0]}", _ms(lat[0])))
        rows += [
            _latency_row(f"latency: {name}", lat[i], lat[0], targeted=i == 2)
            for i, name in enumerate(names)
            if i
        ]
        return rows + _in_process(provider)


# -- ListTasks under an owner filter -------------------------------------------------------------


def _median_ms(port: int, path: str, headers: Headers, count: int = 60) -> tuple[float, object]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    samples, body = [], None
    try:
        for i in range(count + 5):
            start = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status}: {raw[:300]!r}")
            if i >= 5:  # the first few warm up
                samples.append(time.perf_counter() - start)
            body = json.loads(raw)
    finally:
        conn.close()
    return statistics.median(samples) * 1000, body


LIST_FILTERS = {
    "no filter": "",
    "state=RUNNING": "&state=RUNNING",
    "name_prefix=hotfix- (few)": "&name_prefix=hotfix-",
    "tag project=proj-3": "&tag_key=project&tag_value=proj-3",
}


def owner_listing(workers: int) -> list[Row]:
    """ListTasks MINIMAL over 100,000 tasks, two thirds another owner's: as the owner of the
    rest (an owner filter) against an admin (no owner filter), same query, same server."""
    with (
        tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp,
        IdentityProvider() as provider,
    ):
        work = Path(tmp)
        provider.add_key("bench-rsa")
        db = seed.seeded_db(work / "data" / "tasks.db")
        note("auth: giving two of every three seeded tasks to another owner")
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE tasks SET owner = ? WHERE rowid % 3 != 0", (OTHER_OWNER,))
        owner = {"Authorization": f"Bearer {provider.token(seed.OWNER)}"}
        admin = {"Authorization": f"Bearer {provider.token('bench-admin')}"}
        rows: list[Row] = []
        with redis_server(work) as redis_url:
            env = _oidc_env(provider, KUEUE_TES_ADMINS="bench-admin") | {
                "KUEUE_TES_REDIS_URL": redis_url,
                "KUEUE_TES_WORKERS": str(workers),
                "KUEUE_TES_DATA_DIR": str(work / "data"),
                "KUEUE_TES_SQLITE_PATH": str(db),
            }
            server = gunicorn_server("tes", work, env, SERVICE_INFO)
            with server as port, contextlib.closing(sqlite3.connect(db)) as check:
                for label, query in LIST_FILTERS.items():
                    note(f"auth: ListTasks {label}, owner and admin")
                    path = f"{TASKS}?view=MINIMAL{query}"
                    admin_ms, _ = _median_ms(port, path, admin)
                    owner_ms, page = _median_ms(port, path, owner)
                    ids = [task["id"] for task in page["tasks"]]  # type: ignore[index]
                    marks = ",".join("?" * len(ids))
                    sql = f"SELECT DISTINCT owner FROM tasks WHERE id IN ({marks})"
                    owners = {row[0] for row in check.execute(sql, ids)}
                    right = owners <= {seed.OWNER}
                    name = f"ListTasks MINIMAL {label}, as owner [{len(ids)}]"
                    if not right:
                        name += f" OTHER OWNERS: {sorted(owners)}"
                    ratio = owner_ms / admin_ms
                    rows.append(
                        Row(
                            name,
                            f"{owner_ms:.2f} ms",
                            reference=f"{admin_ms:.2f} ms (admin)",
                            ratio=f"{ratio:.2f}x",
                            target=f"<= {MAX_OWNER_RATIO:g}x",
                            ok=right and ratio <= MAX_OWNER_RATIO,
                        )
                    )
    return rows
