"""Filers: the code that moves one input or output, one module per URL scheme.

Adding a scheme is adding one module with a ``make(config) -> Filer`` function and one line in
``_MODULES``. Modules are imported on first use, so a task that never touches S3 never pays
for importing boto3. A filer is shared by every transfer of its scheme, from many threads.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from app.models import FileType
from worker.sequencer.filers.base import (
    Filer,
    FilerConfig,
    TransferError,
    TransientError,
    redact,
    retrying,
)
from worker.sequencer.filers.content import write_content
from worker.sequencer.filers.pool import Outcome, transfer_all

__all__ = [
    "Filer",
    "FilerConfig",
    "Outcome",
    "TransferError",
    "TransientError",
    "download",
    "filer_for",
    "redact",
    "retrying",
    "schemes",
    "transfer_all",
    "upload",
    "write_content",
]

#: URL scheme -> module of this package that serves it.
_MODULES = {
    "file": "file",
    "http": "http",
    "https": "http",
    "s3": "s3",
    "ftp": "ftp",
}


def schemes() -> list[str]:
    """Return what inputs and outputs may use: ``content`` and the URL schemes, in order."""
    return ["content", *_MODULES]


def filer_for(url: str, config: FilerConfig) -> Filer:
    """Return the filer for ``url``'s scheme, or raise TransferError naming the ones we have."""
    scheme, sep, _ = url.partition("://")
    module_name = _MODULES.get(scheme.lower()) if sep else None
    if module_name is None:
        shown = f"'{scheme}'" if sep else "(none)"
        raise TransferError(
            f"unsupported URL scheme {shown} in {redact(url)}; this service "
            f"supports: {', '.join(schemes())}"
        )
    return _filer(module_name, config)


@functools.lru_cache(maxsize=32)
def _filer(module_name: str, config: FilerConfig) -> Filer:
    # One filer per scheme and configuration, shared by all transfers and threads: an S3
    # client costs 0.1-0.3 s to build, which a task with a thousand outputs must not pay
    # a thousand times. Filers are therefore stateless or guard their state.
    module = importlib.import_module(f"{__name__}.{module_name}")
    filer: Filer = module.make(config)
    return filer


def download(url: str, dest: Path, kind: FileType, config: FilerConfig) -> None:
    """Fetch ``url`` to ``dest`` with the filer of its scheme."""
    filer_for(url, config).download(url, dest, kind)


def upload(src: Path, url: str, config: FilerConfig) -> None:
    """Store the file ``src`` at ``url`` with the filer of its scheme."""
    filer_for(url, config).upload(src, url)
