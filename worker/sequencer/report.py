"""The sequencer's JSON-lines report on stdout (docs/task-pod.md)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO


def now() -> str:
    """Return the current UTC time as RFC 3339."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Report:
    """Writes one JSON object per line, each marked as ours."""

    def __init__(self, stream: TextIO | None = None) -> None:
        """Report on ``stream`` (stdout by default)."""
        self.stream = stream or sys.stdout

    def event(self, event: str, **fields: Any) -> None:
        """Print one report line and flush it, so the pod log has it even if we are killed."""
        line = json.dumps({"kueue-tes": 1, "event": event, **fields}, ensure_ascii=False)
        self.stream.write(line + "\n")
        self.stream.flush()
