"""http:// and https:// URLs: streamed GET downloads, and PUT uploads where enabled."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit, urlunsplit

from app.models import FileType
from worker.sequencer.filers.base import (
    FilerConfig,
    TransferError,
    TransientError,
    make_dirs,
    part_path,
    redact,
    retrying,
)

#: Statuses that say "try again later" rather than "this request is wrong".
_RETRYABLE_STATUSES = frozenset({408, 425, 429})

_CHUNK = 1024 * 1024


class HttpFiler:
    """Fetches with GET and, when the operator allows it, stores with PUT."""

    def __init__(self, config: FilerConfig) -> None:
        self.config = config

    def download(self, url: str, dest: Path, kind: FileType) -> None:
        """Stream ``url`` to ``dest``; DIRECTORY inputs are refused (HTTP has no listing)."""
        if kind is FileType.DIRECTORY:
            raise TransferError(
                f"{redact(url)}: DIRECTORY inputs cannot be fetched over http(s), "
                "which has no directory listing; list the files as FILE inputs "
                "or use s3:// or ftp://"
            )
        retrying(lambda: self._get(url, dest), self.config, f"download {redact(url)}")

    def upload(self, src: Path, url: str) -> None:
        """PUT the file ``src`` to ``url``, if the operator enabled HTTP uploads."""
        if not self.config.http_put:
            raise TransferError(
                f"{redact(url)}: uploading over http(s) is disabled here; ask "
                "the operator to enable HTTP PUT uploads (KUEUE_TES_HTTP_PUT), or use an s3://, "
                "ftp:// or file:// output URL"
            )
        retrying(lambda: self._put(src, url), self.config, f"upload {redact(url)}")

    def _get(self, url: str, dest: Path) -> None:
        make_dirs(dest.parent)
        tmp = part_path(dest)
        try:
            with self._open(_request(url, "GET"), url) as response, tmp.open("wb") as out:
                shutil.copyfileobj(response, out, _CHUNK)
            os.replace(tmp, dest)
        except OSError as exc:
            raise TransferError(
                f"{redact(url)}: cannot write {dest}: {exc.strerror or exc}"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _put(self, src: Path, url: str) -> None:
        try:
            size = src.stat().st_size
            with src.open("rb") as body:
                request = _request(url, "PUT", body)
                # An explicit length avoids chunked encoding, which many object stores refuse.
                request.add_header("Content-Length", str(size))
                request.add_header("Content-Type", "application/octet-stream")
                with self._open(request, url):
                    pass
        except FileNotFoundError as exc:
            raise TransferError(f"{redact(url)}: the local file {src} is gone") from exc

    def _open(self, request: urllib.request.Request, url: str) -> _Guarded:
        url = redact(url)
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(
                request, timeout=self.config.timeout_seconds
            )
        except urllib.error.HTTPError as exc:
            message = f"{url}: HTTP {exc.code} {exc.reason}"
            if exc.code >= 500 or exc.code in _RETRYABLE_STATUSES:
                raise TransientError(message) from exc
            raise TransferError(message + _hint(exc.code)) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, OSError):
                raise TransientError(f"{url}: cannot connect: {reason}") from exc
            raise TransferError(f"{url}: {reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{url}: connection failed: {exc!r}") from exc
        return _Guarded(response, url)


class _Guarded:
    """Wraps a response so that a connection lost mid-body is a TransientError."""

    def __init__(self, response: http.client.HTTPResponse, url: str) -> None:
        self._response = response
        self._url = url

    def read(self, amount: int = -1) -> bytes:
        try:
            return self._response.read(amount)
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{self._url}: connection lost while reading: {exc!r}") from exc

    def __enter__(self) -> _Guarded:
        return self

    def __exit__(self, *exc: object) -> None:
        self._response.close()


def _request(url: str, method: str, body: BinaryIO | None = None) -> urllib.request.Request:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TransferError(f"{redact(url)}: not a valid URL: {exc}") from exc
    # urllib does not take credentials from the URL itself; send them as Basic auth.
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    request = urllib.request.Request(clean, data=body, method=method)
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    return request


def _hint(status: int) -> str:
    if status in (401, 403):
        return "; check the credentials in the URL and the server's permissions"
    if status == 404:
        return "; check the URL"
    return ""


def make(config: FilerConfig) -> HttpFiler:
    """Return the http(s) filer."""
    return HttpFiler(config)
