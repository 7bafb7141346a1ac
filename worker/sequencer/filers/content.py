"""Inline input content: TES ``content`` written to a file, no URL involved."""

from __future__ import annotations

import os
from pathlib import Path

from worker.sequencer.filers.base import TransferError

#: Inline content is data, or a script the executor runs through its interpreter
#: (``sh script.sh``), so it is never made executable.
MODE = 0o644


def write_content(content: str, dest: Path) -> None:
    """Write ``content`` (UTF-8) to ``dest`` with mode 0644, creating parent directories."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(content, encoding="utf-8")
        # chmod after writing: the umask must not decide what the executor can read.
        os.chmod(dest, MODE)
    except OSError as exc:
        raise TransferError(
            f"cannot write inline content to {dest}: {exc.strerror or exc}"
        ) from exc
