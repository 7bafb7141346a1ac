"""ftp:// URLs through the standard library: files, directory trees, uploads into new folders.

``ftp://user:password@host:port/path``: without a user the login is anonymous. As in RFC 1738
and curl, the path is relative to the login directory; ``%2F`` at its start makes it absolute
(``ftp://host/%2Fpub/x``).
"""

from __future__ import annotations

import contextlib
import ftplib
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeAlias
from urllib.parse import unquote, urlsplit

from app.models import FileType
from worker.sequencer.filers.base import (
    FilerConfig,
    TransferError,
    TransientError,
    child_path,
    make_dirs,
    part_path,
    redact,
    retrying,
)

#: Replies to MLSD that mean "this server does not know MLSD", not "no such directory".
_NOT_IMPLEMENTED = ("500", "502", "504")
#: Deeper trees are taken for a symlink loop on the server.
_MAX_DEPTH = 64

_Work: TypeAlias = Callable[[ftplib.FTP], None]


@dataclass(frozen=True)
class _Target:
    url: str  # redacted, for messages
    host: str
    port: int
    user: str
    password: str
    path: str


class FtpFiler:
    """Transfers files and trees with one FTP session per attempt."""

    def __init__(self, config: FilerConfig) -> None:
        self.config = config

    def download(self, url: str, dest: Path, kind: FileType) -> None:
        """Fetch one file (FILE) or a whole remote tree (DIRECTORY) to ``dest``."""
        target = _parse(url)
        if kind is FileType.DIRECTORY:
            # One attempt = the whole tree in one session; a retry rewrites what is there.
            tree = functools.partial(
                self._get_tree, target=target, remote=target.path, dest=dest, depth=0
            )
            retrying(lambda: self._attempt(target, tree), self.config, f"download {target.url}")
            return
        if not target.path or target.path.endswith("/"):
            raise TransferError(
                f"{target.url}: names a directory; declare the input as "
                "DIRECTORY or give a file's path"
            )
        one = functools.partial(_get_file, remote=target.path, dest=dest)
        retrying(lambda: self._attempt(target, one), self.config, f"download {target.url}")

    def upload(self, src: Path, url: str) -> None:
        """Store the file ``src`` at ``url``, creating missing remote directories."""
        target = _parse(url)
        if not target.path or target.path.endswith("/"):
            raise TransferError(f"{target.url}: an output URL must name a file, not a directory")
        put = functools.partial(_put, target=target, src=src)
        retrying(lambda: self._attempt(target, put), self.config, f"upload {target.url}")

    def _attempt(self, target: _Target, work: _Work) -> None:
        try:
            with self._session(target) as ftp:
                work(ftp)
        except ftplib.error_perm as exc:
            raise TransferError(f"{target.url}: {_reply(exc)}") from exc
        except (ftplib.error_temp, ftplib.error_reply, ftplib.error_proto) as exc:
            raise TransientError(f"{target.url}: {_reply(exc)}") from exc
        except (OSError, EOFError) as exc:
            raise TransientError(f"{target.url}: connection failed: {exc!r}") from exc

    @contextmanager
    def _session(self, target: _Target) -> Iterator[ftplib.FTP]:
        ftp = ftplib.FTP(timeout=self.config.timeout_seconds)
        try:
            ftp.connect(target.host, target.port)
            try:
                ftp.login(target.user, target.password)
            except ftplib.error_perm as exc:
                raise TransferError(
                    f"{target.url}: login refused ({_reply(exc)}); check the "
                    "user and password in the URL"
                ) from exc
            yield ftp
        finally:
            ftp.close()

    def _get_tree(
        self, ftp: ftplib.FTP, target: _Target, remote: str, dest: Path, depth: int
    ) -> None:
        if depth > _MAX_DEPTH:
            raise TransferError(
                f"{target.url}: deeper than {_MAX_DEPTH} levels at {remote}; "
                "is there a directory link loop on the server?"
            )
        make_dirs(dest)
        for name, is_dir in _entries(ftp, remote):
            child = f"{remote.rstrip('/')}/{name}" if remote else name
            local = child_path(dest, name, target.url)
            if is_dir:
                self._get_tree(ftp, target, child, local, depth + 1)
            else:
                _get_file(ftp, child, local)


def _get_file(ftp: ftplib.FTP, remote: str, dest: Path) -> None:
    make_dirs(dest.parent)
    tmp = part_path(dest)
    try:
        out = tmp.open("wb")
    except OSError as exc:
        raise TransferError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    try:
        with out:
            ftp.retrbinary(f"RETR {remote}", _local_writer(out, dest))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _local_writer(out: BinaryIO, dest: Path) -> Callable[[bytes], None]:
    def write(block: bytes) -> None:
        try:
            out.write(block)
        except OSError as exc:
            # A full or read-only disk here will not mend itself by retrying the server.
            raise TransferError(f"cannot write {dest}: {exc.strerror or exc}") from exc

    return write


def _entries(ftp: ftplib.FTP, remote: str) -> list[tuple[str, bool]]:
    try:
        found = []
        for name, facts in ftp.mlsd(remote, facts=["type"]):
            kind = facts.get("type", "").lower()
            if kind in ("file", "dir") and name not in (".", ".."):
                found.append((name, kind == "dir"))
        return sorted(found)
    except ftplib.error_perm as exc:
        if not str(exc).startswith(_NOT_IMPLEMENTED):
            raise
    return _entries_nlst(ftp, remote)


def _entries_nlst(ftp: ftplib.FTP, remote: str) -> list[tuple[str, bool]]:
    # NLST gives names only: a name we can change into is a directory.
    home = ftp.pwd()
    try:
        names = ftp.nlst(remote) if remote else ftp.nlst()
    except ftplib.error_perm:
        # Some servers answer 550 to NLST of an empty directory; tell that from a missing one.
        ftp.cwd(remote or home)
        ftp.cwd(home)
        return []
    found = []
    for listed in names:
        name = listed.rstrip("/").rsplit("/", 1)[-1]
        if name in ("", ".", ".."):
            continue
        child = f"{remote.rstrip('/')}/{name}" if remote else name
        try:
            ftp.cwd(child)
            is_dir = True
        except ftplib.error_perm:
            is_dir = False
        finally:
            ftp.cwd(home)
        found.append((name, is_dir))
    return sorted(found)


def _put(ftp: ftplib.FTP, target: _Target, src: Path) -> None:
    folders = target.path.split("/")[:-1]
    for depth in range(1, len(folders) + 1):
        folder = "/".join(folders[:depth])
        if not folder:
            continue  # the leading "" of an absolute path
        # It may exist already; if it cannot be made, STOR below says why.
        with contextlib.suppress(ftplib.error_perm):
            ftp.mkd(folder)
    try:
        body = src.open("rb")
    except OSError as exc:
        raise TransferError(
            f"{target.url}: cannot read the local file {src}: {exc.strerror or exc}"
        ) from exc
    with body:
        ftp.storbinary(f"STOR {target.path}", body)


def _parse(url: str) -> _Target:
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 21
    except ValueError as exc:
        raise TransferError(f"{shown}: not a valid ftp:// URL: {exc}") from exc
    if parts.scheme != "ftp" or not parts.hostname:
        raise TransferError(f"{shown}: not an ftp://host/path URL")
    user = unquote(parts.username) if parts.username else "anonymous"
    password = unquote(parts.password or "") if parts.username else "anonymous@"
    # RFC 1738: ";type=i" may end the path; binary transfers are all we do anyway.
    path = unquote(parts.path[1:].split(";type=", 1)[0])
    return _Target(shown, parts.hostname, port, user, password, path)


def _reply(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def make(config: FilerConfig) -> FtpFiler:
    """Return the ftp:// filer."""
    return FtpFiler(config)
