"""What every filer shares: its configuration, its errors, its interface and bounded retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from app.models import FileType

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1024 * 1024


@dataclass(frozen=True)
class FilerConfig:
    """How the filers reach storage; built by the sequencer from Settings."""

    #: Absolute host directories under which file:// URLs are allowed (shared filesystems).
    file_roots: tuple[str, ...] = ()
    #: S3 endpoint (MinIO, Ceph, ...); None means AWS itself.
    s3_endpoint_url: str | None = None
    #: S3 region; None lets boto3 decide (AWS_REGION / AWS_DEFAULT_REGION, then us-east-1).
    s3_region: str | None = None
    #: Path-style S3 addressing (http://host/bucket/key), which most S3-compatible stores need.
    s3_path_style: bool = False
    #: Whether http(s) outputs may be uploaded with PUT.
    http_put: bool = False
    #: Retries of one transfer after a transient failure (so retries + 1 attempts in all).
    retries: int = 4
    #: First pause between attempts; it doubles at each retry.
    backoff_seconds: float = 0.5
    #: S3 objects at least this large are uploaded and downloaded in parts.
    multipart_threshold_bytes: int = 64 * MIB
    #: Connect and read timeout of one network operation.
    timeout_seconds: float = 60.0


class TransferError(Exception):
    """A transfer failed for good; the message says what to change."""


class TransientError(TransferError):
    """A transfer failed in a way that may pass (server error, lost connection); retry it."""


class Filer(Protocol):
    """Moves data between one URL scheme and the local filesystem."""

    def download(self, url: str, dest: Path, kind: FileType) -> None:
        """Fetch ``url`` to ``dest``: a file for FILE, a tree under ``dest`` for DIRECTORY."""

    def upload(self, src: Path, url: str) -> None:
        """Store the regular file ``src`` at ``url``."""


def redact(url: str) -> str:
    """Return ``url`` with any password replaced, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split(":", 1)[0] + "://<unparseable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def retrying(fn: Callable[[], T], config: FilerConfig, what: str) -> T:
    """Call ``fn``, retrying with exponential backoff on TransientError only."""
    attempts = max(config.retries, 0) + 1
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except TransientError as exc:
            if attempt == attempts:
                # Permanent from here on: callers must not stack their own retries on ours.
                raise TransferError(f"{what}: gave up after {attempts} attempts: {exc}") from exc
            pause = config.backoff_seconds * (2 ** (attempt - 1))
            log.warning(
                "%s: attempt %d of %d failed (%s); retrying in %.2fs",
                what,
                attempt,
                attempts,
                exc,
                pause,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop always returns or raises


def part_path(dest: Path) -> Path:
    """Return the temporary sibling that a download writes before renaming it to ``dest``."""
    return dest.with_name(f".{dest.name}.part")


def child_path(dest: Path, relative: str, url: str) -> Path:
    """Return ``dest / relative``, refusing names that would climb out of ``dest``."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    # A remote listing is data from elsewhere: "..", or an empty name, must not place files
    # outside the directory the task asked for.
    if not parts or ".." in parts:
        raise TransferError(
            f"{redact(url)}: refusing the entry {relative!r}, which would land outside {dest}"
        )
    return dest.joinpath(*parts)


def make_dirs(path: Path) -> None:
    """Create the local directory ``path`` and its parents, as a TransferError if it fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # Local disk trouble is not the server's: it is permanent, never retried.
        raise TransferError(f"cannot create the directory {path}: {exc.strerror or exc}") from exc
