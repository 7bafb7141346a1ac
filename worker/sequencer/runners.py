"""The sequencer's side of the runners: who is alive, whose turn it is (docs/task-pod.md).

The setup container prepared, for every executor ``i``, ``/tes/exec/<i>/life`` (a FIFO) and in
the ready layout ``/tes/exec/<i>/wake`` (another FIFO). The sequencer opens every life FIFO for
reading at its start; a runner holds the write end open for as long as it lives and writes
short lines into it (``start``, ``end``, ``fail <why>``). When the runner ends, however it ends,
the kernel closes its end and the sequencer's poll reports a hang-up at once: no polling on
either side. Turns and the verdict are flag files; the wake FIFOs only carry the news of them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
from dataclasses import dataclass, field
from pathlib import Path

#: The FIFO `finish` waits on (created by setup).
FINISH_WAKE = "finish.wake"
_LINE_LIMIT = 4096


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(path.stat().st_mode)
    except OSError:
        return False


def poke(fifo: Path) -> None:
    """Write a newline into a wake FIFO if someone reads it; nobody reading is fine."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # ENXIO: no reader yet; it checks its flag file once it opens the FIFO
    with contextlib.suppress(OSError):
        os.write(fd, b"\n")
    os.close(fd)


@dataclass
class Runners:
    """The runners' life FIFOs, read without blocking: what each runner said, who ended."""

    control: Path
    fds: dict[int, int] = field(default_factory=dict)
    said: dict[int, list[str]] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    _buffers: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def open(cls, control: Path) -> Runners:
        """Open every life FIFO under ``control``/exec for reading (this unblocks the runners)."""
        runners = cls(control)
        for folder in sorted((control / "exec").glob("*")):
            if folder.name.isdigit() and _is_fifo(folder / "life"):
                with contextlib.suppress(OSError):
                    fd = os.open(folder / "life", os.O_RDONLY | os.O_NONBLOCK)
                    runners.fds[int(folder.name)] = fd
        return runners

    def watches(self, index: int) -> bool:
        """Tell whether the life of runner ``index`` is followed (setup prepared its FIFO)."""
        return index in self.fds or index in self.ended

    def wait(self, timeout: float) -> list[tuple[int, str]]:
        """Wait up to ``timeout`` s for runners' lines or ends; return (index, line) pairs.

        An ended runner gives the line ``""`` once, after everything it wrote.
        """
        if not self.fds:
            return []
        poller = select.poll()
        for fd in self.fds.values():
            poller.register(fd, select.POLLIN)
        try:
            ready = dict(poller.poll(max(0, int(timeout * 1000))))
        except InterruptedError:
            return []
        out: list[tuple[int, str]] = []
        for index, fd in list(self.fds.items()):
            if fd not in ready:
                continue
            out += self._drain(index, fd)
        return out

    def _drain(self, index: int, fd: int) -> list[tuple[int, str]]:
        data = b""
        gone = False
        while True:
            try:
                chunk = os.read(fd, _LINE_LIMIT)
            except BlockingIOError:
                break
            except OSError as exc:
                gone = exc.errno != errno.EINTR
                break
            if not chunk:
                gone = True  # end of file: no writer any more
                break
            data += chunk
        text = self._buffers.pop(index, b"") + data
        *lines, rest = text.split(b"\n")
        if rest and not gone:
            self._buffers[index] = rest[-_LINE_LIMIT:]
        elif rest:
            lines.append(rest)
        out = [(index, line.decode("utf-8", "replace").strip()) for line in lines]
        self.said.setdefault(index, []).extend(line for _, line in out)
        if gone:
            os.close(fd)
            del self.fds[index]
            self.ended.add(index)
            out.append((index, ""))
        return out

    def failure(self, index: int) -> str | None:
        """Return what runner ``index`` said it could not do (a ``fail`` line), if anything."""
        for line in self.said.get(index, ()):
            if line.startswith("fail "):
                return line[5:]
        return None

    def open_gate(self, index: int) -> None:
        """Give executor ``index`` its turn (the ready layout; without a wake FIFO, nothing)."""
        folder = self.control / "exec" / str(index)
        if not _is_fifo(folder / "wake"):
            return
        (folder / "turn").touch()
        poke(folder / "wake")

    def wake_all(self) -> None:
        """Wake every waiting runner and `finish`: the verdict exists."""
        for wake in sorted((self.control / "exec").glob("*/wake")):
            poke(wake)
        poke(self.control / FINISH_WAKE)

    def close(self) -> None:
        """Close the FIFOs."""
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
