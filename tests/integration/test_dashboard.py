"""The dashboard end to end: a real headless Chromium against a real `kueue-tes serve` with
Basic auth and a 1-cpu quota, so that tasks run, wait behind the quota and can be cancelled."""

from __future__ import annotations

import base64
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import browser_context
from tests.integration.e2e_support import Server, serve_env, serving
from tests.integration.test_auth import htpasswd_line

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
WAITING = "insufficient unused quota"


@dataclass
class Site:
    """The server, its root URL, and the tasks made for the tests."""

    server: Server
    root: str
    tasks: dict[str, str]


def _call(
    site_root: str, user: str, method: str, path: str, body: Any = None, **headers: str
) -> Any:
    import json

    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        site_root + path,
        data=data,
        method=method,
        headers={"authorization": f"Basic {token}", "content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`kueue-tes serve` with alice and bob, alice's four tasks and one of bob's."""
    tmp = tmp_path_factory.mktemp("dashboard")
    users = tmp / "htpasswd"
    users.write_text("".join(htpasswd_line(n, p) + "\n" for n, p in PASSWORDS.items()))
    env = serve_env(
        {
            "KUEUE_TES_AUTH": "basic",
            "KUEUE_TES_BASIC_USERS_FILE": str(users),
            "KUEUE_TES_LOCAL_CPU": "1",
            "KUEUE_TES_SIDECAR_CPU": "0",
        }
    )
    one = {"resources": {"cpu_cores": 1}}
    with serving(tmp / "data", env) as server:
        root = server.base.removesuffix("/ga4gh/tes/v1")
        made: dict[str, str] = {}

        def create(user: str, name: str, command: list[str], **tags: str) -> None:
            body = {
                **one,
                "name": name,
                "tags": tags,
                "executors": [{"image": "alpine", "command": command}],
            }
            status, text = _call(root, user, "POST", "/ga4gh/tes/v1/tasks", body)
            assert status == 200, text
            made[name] = text.split('"')[3]

        create(
            "alice",
            "align-1",
            ["sh", "-c", "echo aligned reads; echo a warning >&2; sleep 2"],
            project="genome",
        )
        create("alice", "align-2", ["sh", "-c", "echo second; exit 3"], project="genome")
        create("alice", "qc-1", ["sleep", "1"], project="qc")
        create("alice", "blocked", ["sleep", "30"], project="qc")
        create("bob", "bob-secret", ["true"])
        yield Site(server, root, made)


@pytest.fixture
def alice(site: Site) -> Iterator[Any]:
    """A browser page logged in as alice (Basic credentials, as a browser sends them)."""
    with browser_context(
        http_credentials={"username": "alice", "password": PASSWORDS["alice"]}
    ) as ctx:
        yield ctx.new_page()


def _rows(page: Any) -> dict[str, str]:
    """Task name -> state, as the list shows them (read at once: the live refresh swaps rows)."""
    pairs = page.eval_on_selector_all(
        "table.tasks tbody tr",
        "rows => rows.map(r => [r.cells[1].innerText.split('\\n')[0], r.cells[2].innerText])",
    )
    return dict(pairs)


def _until(page: Any, check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, page.content()[:3000]
        time.sleep(0.3)
        page.reload()


def test_list_shows_only_ones_own_tasks_and_filters(site: Site, alice: Any) -> None:
    alice.goto(f"{site.root}/dashboard/")
    names = _rows(alice)
    assert set(names) == {"align-1", "align-2", "qc-1", "blocked"}, names
    assert "bob-secret" not in alice.content() and site.tasks["bob-secret"] not in alice.content()
    alice.fill("input[name=name_prefix]", "align")
    alice.click("button[type=submit]")
    assert set(_rows(alice)) == {"align-1", "align-2"}
    alice.fill("input[name=name_prefix]", "")
    alice.fill("input[name=tags]", "project=qc")
    alice.click("button[type=submit]")
    assert set(_rows(alice)) == {"qc-1", "blocked"}
    assert "tags=project%3Dqc" in alice.url
    # Paging: one task per page, newest first, through every page.
    alice.goto(f"{site.root}/dashboard/?page_size=20")
    seen = []
    alice.goto(f"{site.root}/dashboard/?name_prefix=align&page_size=1")
    while True:
        seen += list(_rows(alice))
        if alice.query_selector("text=Older tasks") is None:
            break
        alice.click("text=Older tasks")
    assert seen == ["align-2", "align-1"]


def test_task_page_shows_logs_reason_and_cancel(site: Site, alice: Any) -> None:
    # The last task waits behind the quota while the others run: the page says why.
    alice.goto(f"{site.root}/dashboard/tasks/{site.tasks['blocked']}")
    _until(alice, lambda: WAITING in alice.content() or "CANCELED" in alice.content())
    assert alice.query_selector(".why.big") is not None
    assert "QUEUED" in alice.inner_text(".title")
    # The list says why under the waiting task too.
    alice.goto(f"{site.root}/dashboard/?name_prefix=blocked")
    assert WAITING in alice.inner_text("table.tasks tbody tr .why")
    alice.goto(f"{site.root}/dashboard/tasks/{site.tasks['blocked']}")
    # Cancel it from the page; the live page follows it to CANCELED.
    alice.on("dialog", lambda dialog: dialog.accept())
    alice.click("form.cancel button")
    alice.wait_for_url(re.compile(r"/dashboard/tasks/"))
    # No reload: the page's own live refresh shows the change.
    expect(alice.locator(".title .badge")).to_have_text("CANCELED", timeout=60_000)
    assert alice.query_selector("form.cancel") is None  # nothing left to cancel
    # A task that ran: executors, per-attempt executor logs with stdout and stderr tails.
    alice.goto(f"{site.root}/dashboard/tasks/{site.tasks['align-1']}")
    _until(alice, lambda: "COMPLETE" in alice.inner_text(".title"))
    text = alice.inner_text("main")
    assert "Attempt 1" in text and "aligned reads" in text and "a warning" in text
    assert "exit 0" in text and "submitted to LocalQueue tes" in text
    alice.goto(f"{site.root}/dashboard/tasks/{site.tasks['align-2']}")
    _until(alice, lambda: "EXECUTOR_ERROR" in alice.inner_text(".title"))
    assert "exit 3" in alice.inner_text("main")


def test_another_users_task_is_not_found(site: Site, alice: Any) -> None:
    response = alice.goto(f"{site.root}/dashboard/tasks/{site.tasks['bob-secret']}")
    assert response.status == 404
    assert "bob-secret" not in alice.content()


def test_queues_page(site: Site, alice: Any) -> None:
    alice.goto(f"{site.root}/dashboard/queues")
    row = alice.inner_text("table.queues tbody tr")
    assert row.split("\t")[0].strip() == "tes"


def test_cancel_from_another_site_is_refused(site: Site) -> None:
    path = f"/dashboard/tasks/{site.tasks['qc-1']}/cancel"
    assert _call(site.root, "alice", "POST", path)[0] == 403  # no Origin, no Referer
    assert _call(site.root, "alice", "POST", path, Origin="https://evil.example")[0] == 403
    status, text = _call(site.root, "alice", "GET", f"/ga4gh/tes/v1/tasks/{site.tasks['qc-1']}")
    assert status == 200 and "CANCEL" not in text


def test_dashboard_needs_credentials(site: Site) -> None:
    try:
        urllib.request.urlopen(f"{site.root}/dashboard/", timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
        assert exc.headers["www-authenticate"].startswith("Basic")
    else:
        pytest.fail("the dashboard answered without credentials")
