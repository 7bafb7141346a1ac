"""file:// URLs: copies to and from shared filesystems under operator-configured roots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.models import FileType
from worker.sequencer.filers.base import FilerConfig, TransferError, part_path


class FileFiler:
    """Copies between the task's work volume and directories under ``config.file_roots``."""

    def __init__(self, config: FilerConfig) -> None:
        self.config = config
        self.roots = tuple(Path(root).resolve() for root in config.file_roots)

    def download(self, url: str, dest: Path, kind: FileType) -> None:
        """Copy the file or tree named by ``url`` to ``dest``."""
        src = self._confined(url, self._path(url))
        try:
            if kind is FileType.DIRECTORY:
                if not src.is_dir():
                    raise TransferError(
                        f"{url}: not a directory; declare the input as FILE "
                        "or point it at a directory"
                    )
                self._copy_tree(url, src, dest, frozenset())
            else:
                if not src.exists():
                    raise TransferError(f"{url}: no such file")
                if not src.is_file():
                    raise TransferError(
                        f"{url}: not a regular file; declare the input as "
                        "DIRECTORY to fetch a directory"
                    )
                _copy_file(src, dest)
        except OSError as exc:
            raise TransferError(f"{url}: cannot copy to {dest}: {exc.strerror or exc}") from exc

    def upload(self, src: Path, url: str) -> None:
        """Copy the regular file ``src`` to the path named by ``url``."""
        dest = self._confined(url, self._path(url))
        try:
            _copy_file(src, dest)
        except OSError as exc:
            raise TransferError(f"{url}: cannot copy {src} there: {exc.strerror or exc}") from exc

    def _path(self, url: str) -> Path:
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise TransferError(f"{url}: not a file:// URL")
        if parts.netloc not in ("", "localhost"):
            raise TransferError(
                f"{url}: file:// URLs name a path on this host; drop the host "
                f"{parts.netloc!r} (file:///path)"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise TransferError(f"{url}: the path must be absolute (file:///path)")
        return Path(path)

    def _confined(self, url: str, path: Path) -> Path:
        # Resolving first follows symlinks and "..", so a link inside a root that points
        # elsewhere is judged by where it really leads.
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise TransferError(f"{url}: cannot resolve {path}: {exc}") from exc
        if not any(real.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots) or "none configured"
            raise TransferError(
                f"{url} is outside the allowed roots ({allowed}); ask the operator to add a root"
            )
        return real

    def _copy_tree(self, url: str, src: Path, dest: Path, seen: frozenset[Path]) -> None:
        if src in seen:
            raise TransferError(f"{url}: the directory links back to itself at {src}")
        seen = seen | {src}
        dest.mkdir(parents=True, exist_ok=True)
        for entry in sorted(src.iterdir()):
            real = self._confined(url, entry)
            if real.is_dir():
                self._copy_tree(url, real, dest / entry.name, seen)
            elif real.is_file():
                _copy_file(real, dest / entry.name)
            # Sockets, FIFOs and devices are not data a task can be given; they are skipped.


def _copy_file(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(dest)
    try:
        # copy2 keeps the mode bits, so scripts on the shared filesystem stay executable.
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def make(config: FilerConfig) -> FileFiler:
    """Return the file:// filer."""
    return FileFiler(config)
