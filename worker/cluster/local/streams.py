"""The byte streams of a pull: hashed on the way, read ahead in a thread, gunzipped.

A layer goes through two digests (the blob's, the uncompressed tar's), a copy to the blob
cache, decompression and unpacking. ``Prefetched`` moves the first half (network, blob digest,
blob file) to a thread of its own, so that it runs on another core beside the second
(decompression, tar digest, files): hashlib, zlib and file writes release the GIL.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import zlib
from typing import IO, Any

CHUNK = 1024 * 1024
_DEPTH = 8  # chunks read ahead: 8 MiB at most in memory per layer
_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class UnsupportedCompression(Exception):
    """A layer's compression is one the runtime cannot read."""


class _Reader(io.RawIOBase):
    """A readable raw stream whose subclass implements ``read``."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class Hashing(_Reader):
    """Reads through to ``source``, hashing what passes (unless not ``hashed``), into ``sink``."""

    def __init__(self, source: Any, sink: IO[bytes] | None = None, hashed: bool = True) -> None:
        self.source, self.sink = source, sink
        self.hash = hashlib.sha256() if hashed else None
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.source.read(CHUNK if size is None or size < 0 else size)
        if data:
            if self.hash is not None:
                self.hash.update(data)
            self.size += len(data)
            if self.sink is not None:
                self.sink.write(data)
        return data

    def drain(self) -> None:
        """Read what is left (padding after the archive's end), so that the digest is whole."""
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        """Return the digest of what went through."""
        return "sha256:" + (self.hash.hexdigest() if self.hash is not None else "")


class Prefetched(_Reader):
    """Reads ``source`` ahead in a thread of its own; its errors come out of ``read``."""

    def __init__(self, source: Hashing) -> None:
        self.source = source
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=_DEPTH)
        self._stop = threading.Event()
        self._pending = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._run, name="pull-read", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while self._put(data := self.source.read(CHUNK)) and data:
                pass
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            if self._done:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
                return b""
            self._pending = memoryview(item)
        n = len(self._pending) if size is None or size < 0 else min(size, len(self._pending))
        out = bytes(self._pending[:n])
        self._pending = self._pending[n:]
        return out

    def drain(self) -> None:
        """Read to the end, so that the source's digest is whole, and wait for the thread."""
        while self.read(CHUNK):
            pass
        self.close()

    def close(self) -> None:
        """Stop reading ahead and wait for the thread."""
        self._stop.set()
        self._thread.join()
        super().close()


class Gunzip(_Reader):
    """Decompresses a gzip stream (members one after another, zero padding allowed); zlib
    checks each member's CRC and length."""

    def __init__(self, raw: Any, head: bytes) -> None:
        self.raw = raw
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = head
        self._between = False

    def read(self, size: int = -1) -> bytes:
        limit = CHUNK if size is None or size < 0 else size
        while True:
            if self._z.eof:  # a member ended: another may follow, or zero padding, or nothing
                self._input = self._z.unused_data + self._input
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._between = True
            if self._between:
                self._input = self._input.lstrip(b"\0")
                if not self._input:
                    self._input = self.raw.read(CHUNK)
                    if not self._input:
                        return b""
                    continue
                self._between = False
            tail = self._z.unconsumed_tail
            if not tail and not self._input:
                self._input = self.raw.read(CHUNK)
                if not self._input:
                    raise EOFError("the compressed layer ended before its end-of-stream marker")
            if not tail:
                tail, self._input = self._input, b""
            out = self._z.decompress(tail, limit)
            if out:
                return out


class _Headed(_Reader):
    """A stream whose first bytes were already read."""

    def __init__(self, raw: Any, head: bytes) -> None:
        self.raw, self._head = raw, head

    def read(self, size: int = -1) -> bytes:
        if self._head:
            n = len(self._head) if size is None or size < 0 else size
            out, self._head = self._head[:n], self._head[n:]
            return out
        data: bytes = self.raw.read(CHUNK if size is None or size < 0 else size)
        return data


def decompressed(raw: Any) -> io.RawIOBase:
    """Return the uncompressed stream of a layer: gzip'd or plain tar, told by its first bytes."""
    head = b""
    while len(head) < 4 and (more := raw.read(CHUNK)):
        head += more
    if head.startswith(_GZIP):
        return Gunzip(raw, head)
    if head.startswith(_ZSTD):
        raise UnsupportedCompression(
            "it is zstd-compressed, which the local runtime cannot unpack yet"
        )
    return _Headed(raw, head)
