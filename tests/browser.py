"""Headless Chromium for the dashboard tests and screenshots: Debian's `chromium`, driven by
Playwright (never `playwright install`, which downloads a browser of its own)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

#: Flags that keep Chromium off the network (a closed machine refuses its background calls).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    """Return the Chromium executable; skip without one, but fail under CI (.ci/run has it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextmanager
def browser_context(**options: Any) -> Iterator[Any]:
    """Yield a fresh Playwright browser context (its own profile directory) on Chromium."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    profile = tempfile.mkdtemp(prefix="kueue-tes-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=executable,
                args=FLAGS,
                headless=True,
                viewport={"width": 1280, "height": 800},
                **options,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
