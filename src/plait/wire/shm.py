"""Shared memory for large documents between processes on one host.

A gRPC message of a few hundred kilobytes costs far more than its bytes: gRPC copies it through its
buffers, the kernel copies it through a socket, and the pages it lands in fault in fresh on each
side. Between a gateway and the executors it forked, or a client and a gateway on the same machine,
none of that is needed. So a caller that opens a ``ProcessStream`` (a *lane*, :mod:`plait.wire.lanes`)
also creates a *region*: a file in ``/dev/shm`` it maps, named in the call's metadata
(``plait-shm``) with a random token the file starts with. A server that can map the same file (it
runs on the same host, as a user allowed to open it) and finds the token there says so in its
initial metadata; from then on:

- a request whose documents are at least ``MIN_BYTES`` long carries them in a *slot* of the region
  (the caller allocates it and copies them in) and only the slot's place in the message
  (``Request.shared``);
- the server copies them out as it reads the request, and writes the response's documents into the
  same slot when they fit (``Response.shared``), else sends them in the message as usual;
- the caller copies the response's documents out and frees the slot. A slot is freed only when its
  request is answered or the lane ends: a server never writes into a slot the caller reused.

The ``ROOM`` bytes of a slot before its documents are the reader's: it writes the protobuf field
header there and merges the documents into its message straight from the mapping. plait's
WebSocket client and gateway do the same for binary frames, the offer and the answer travelling as
``plait-shm`` headers of the handshake (:mod:`plait.gateway.ws_session`).

The caller unlinks the file once the server has answered (both sides keep their mappings), so no
file outlives a crash. Nothing changes for a server elsewhere (another host, a container): it cannot
open the path, says nothing, and the documents travel in the messages. ``PLAIT_SHM=0`` in a
process's environment turns it off there (as a caller and as a server).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import mmap
import os
import secrets

from plait.errors import UnavailableError
from plait.wire import plait_pb2 as pb
from plait.wire.status import error_details

log = logging.getLogger("plait.wire")

SHM_KEY = "plait-shm"
"""Metadata key: in a caller's, the region it offers (``path#token``); in a server's initial
metadata, that it mapped the region (value ``1``)."""
SHM_ENV = "PLAIT_SHM"
SHM_DIR = "/dev/shm"
PREFIX = "plait-"
MIN_BYTES = 32 * 1024
"""Documents smaller than this travel in the message: the slot's bookkeeping is not worth it."""
REGION_BYTES = 8 * 1024 * 1024
"""Size of a lane's region. Only the pages slots use are ever touched (a tmpfs file is sparse); a
request that finds no room travels in the message."""
_PAGE = 4096
_TOKEN_BYTES = 16
_HEADER = _PAGE
"""The token sits at the start of the region; slots start after its page."""
ROOM = 16
"""Bytes of a slot before its documents: the reader writes the protobuf field header there and
parses the documents straight out of the mapping (see :func:`take_docs`)."""
_RESERVE_STEP = 1024 * 1024
"""A region's pages are reserved this many bytes at a time, as slots first reach them."""


def enabled() -> bool:
    return os.environ.get(SHM_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class Region:
    """A mapped shared-memory file: slots allocated first-fit (the caller's side) and read and
    written at offsets (both sides)."""

    def __init__(self, mm: mmap.mmap, path: str, token: bytes, fd: int | None = None) -> None:
        self._mm = mm
        self._fd = fd
        """The caller's side keeps the file open, to reserve its pages as slots first reach them."""
        self._reserved = _HEADER
        """Bytes from the start whose pages are allocated (``posix_fallocate``)."""
        self.path = path
        self.token = token
        self.size = len(mm)
        self._free: list[tuple[int, int]] = [(_HEADER, self.size - _HEADER)]
        """Free extents, (offset, size), sorted by offset and never adjacent."""
        self._used: dict[int, int] = {}
        self.closed = False

    @classmethod
    def create(cls, size: int = REGION_BYTES) -> Region | None:
        """A new region (the caller's side); None where there is no ``/dev/shm`` or it is full."""
        global _swept
        if not _swept:
            _swept = True
            sweep()
        path = os.path.join(SHM_DIR, f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, _HEADER)
            mm = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        token = secrets.token_bytes(_TOKEN_BYTES)
        mm[:_TOKEN_BYTES] = token
        return cls(mm, path, token, fd)

    def offer(self) -> tuple[tuple[str, str], ...]:
        """The caller's metadata entry naming this region."""
        return ((SHM_KEY, f"{self.path}#{self.token.hex()}"),)

    @classmethod
    def attach(cls, offer: str) -> Region | None:
        """The region a caller offered (the server's side), or None: not on this host, not ours to
        open, not a plait region, or its token does not match."""
        path, _, token_hex = offer.partition("#")
        name = os.path.basename(path)
        if os.path.dirname(path) != SHM_DIR or not name.startswith(PREFIX) or name in (".", ".."):
            return None
        try:
            token = bytes.fromhex(token_hex)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (ValueError, OSError):
            return None
        try:
            size = os.fstat(fd).st_size
            if size <= _HEADER:
                return None
            mm = mmap.mmap(fd, size)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(token) != _TOKEN_BYTES or mm[:_TOKEN_BYTES] != token:
            mm.close()
            return None
        return cls(mm, path, token)

    def unlink(self) -> None:
        """Remove the file (mappings stay valid): once the server has mapped it, or refused to."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._mm.close()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # The caller's side: slots.

    def alloc(self, length: int) -> tuple[int, int] | None:
        """A slot for ``length`` bytes, as (offset, capacity); None when none is free that large."""
        if self.closed:
            return None
        need = -(-length // _PAGE) * _PAGE
        for i, (offset, size) in enumerate(self._free):
            if size >= need:
                if offset + need > self._reserved and not self._reserve(offset + need):
                    return None
                if size == need:
                    del self._free[i]
                else:
                    self._free[i] = (offset + need, size - need)
                self._used[offset] = need
                return offset, need
        return None

    def _reserve(self, end: int) -> bool:
        """Allocate the file's pages up to ``end`` (rounded up to a MiB) before a slot touches them:
        a page of a sparse file that a full ``/dev/shm`` cannot back would kill the process that
        touches it (SIGBUS), where a refused reservation only sends the request in the message."""
        if self._fd is None:
            return False
        end = min(self.size, -(-end // _RESERVE_STEP) * _RESERVE_STEP)
        try:
            os.posix_fallocate(self._fd, self._reserved, end - self._reserved)
        except OSError as e:
            log.debug(
                "shared memory: cannot reserve %d bytes of %s (%s); large documents go in messages",
                end,
                self.path,
                e,
            )
            return False
        self._reserved = end
        return True

    def free(self, offset: int) -> None:
        size = self._used.pop(offset, None)
        if size is None:
            return
        free = self._free
        i = bisect.bisect_left(free, (offset, 0))
        end = offset + size
        if i < len(free) and free[i][0] == end:  # joins the extent after it
            end += free[i][1]
            del free[i]
        if i > 0 and free[i - 1][0] + free[i - 1][1] == offset:  # and the one before it
            offset = free[i - 1][0]
            i -= 1
            del free[i]
        free.insert(i, (offset, end - offset))

    @property
    def slots_in_use(self) -> int:
        return len(self._used)

    # Both sides: bytes at offsets.

    def write(self, offset: int, data: bytes) -> None:
        self._mm[offset : offset + len(data)] = data

    def read(self, offset: int, length: int) -> bytes:
        return self._mm[offset : offset + length]

    def merge_into(self, message: pb.Request | pb.Response, start: int, header: bytes, length: int) -> None:
        """Write ``header`` at ``start`` and merge the protobuf bytes from there, through ``length``
        bytes after the header, into ``message`` (one copy, out of the mapping)."""
        end = start + len(header) + length
        self._mm[start : start + len(header)] = header
        with memoryview(self._mm) as whole, whole[start:end] as field:
            message.MergeFromString(field)

    def holds(self, offset: int, length: int) -> bool:
        """Whether [offset, offset + length) lies within the region's slots (a server checks what
        a caller sent before reading it)."""
        return offset >= _HEADER and length >= 0 and offset + length <= self.size


_swept = False


def sweep() -> int:
    """Remove the regions of processes that are gone (a file lives only until its server maps it,
    unless its process dies first). Returns how many were removed."""
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].partition("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, name))
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's
        return True
    return True


def put_docs(region: Region, request: pb.Request) -> tuple[bytes, int] | None:
    """Serialize ``request`` with its documents in a slot of ``region`` (copied in); returns the
    serialized message and the slot's offset, or None (documents too small, no room, or a message
    that carries more than its scalar fields and ``docs``) so that it is sent as it is.

    ``request`` itself is not touched (it may be sent again, on another lane): the message that
    goes out is a new one with its scalar fields. Clearing and restoring ``docs`` in place would
    cost far more than the copy into the slot: every bytes assignment to a message grows its
    arena, and a fresh 200 KB block faults in fresh pages."""
    if request.ByteSize() < MIN_BYTES:  # most requests: decided without copying their fields out
        return None
    docs = b""
    scalars = []
    for field, value in request.ListFields():
        if field.name == "docs":
            docs = value
        elif field.type == field.TYPE_MESSAGE or field.is_repeated:
            return None  # docs_matrix, batch...: sent as they are
        else:
            scalars.append((field.name, value))
    if len(docs) < MIN_BYTES:
        return None
    slot = region.alloc(ROOM + len(docs))
    if slot is None:
        return None
    start, size = slot
    region.write(start + ROOM, docs)
    wire = pb.Request(shared=pb.Shared(offset=start + ROOM, length=len(docs), capacity=size - ROOM))
    for name, value in scalars:
        setattr(wire, name, value)
    return wire.SerializeToString(), start


def take_docs(region: Region | None, message: pb.Request | pb.Response) -> str | None:
    """Put the documents a message carries in a slot back in its ``docs``; returns what is wrong
    with the slot, if anything.

    The documents are parsed into the message straight from the mapping: the field's header (tag
    and length) goes in the ``ROOM`` bytes before them, and the message merges that field. That
    is one copy, into the message's own memory. Reading them into ``bytes`` first and assigning
    those costs a second 200 KB allocation per message, which glibc hands back to the kernel and
    faults in again each time: ~30x slower."""
    shared = message.shared
    offset, length = shared.offset, shared.length
    if region is None or region.closed:
        return "the message names a shared-memory slot, but no region is mapped on this stream"
    if not region.holds(offset - ROOM, length + ROOM):
        return f"shared-memory slot [{offset}, +{length}) is outside the region ({region.size} bytes)"
    header = _DOCS_TAGS[type(message)] + varint(length)
    message.ClearField("shared")
    region.merge_into(message, offset - len(header), header, length)
    return None


def varint(n: int) -> bytes:
    """``n`` as a protobuf varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_DOCS_TAGS = {
    cls: bytes([cls.DESCRIPTOR.fields_by_name["docs"].number << 3 | 2]) for cls in (pb.Request, pb.Response)
}
"""The tag byte of each message's ``docs`` field (length-delimited)."""


def answer_in_slot(region: Region, offset: int, capacity: int, response: pb.Response) -> None:
    """Move the response's documents into the request's slot when they are large and fit."""
    if region.closed:
        return
    docs = response.docs
    if MIN_BYTES <= len(docs) <= capacity and region.holds(offset, len(docs)):
        region.write(offset, docs)
        response.ClearField("docs")
        response.shared.offset = offset
        response.shared.length = len(docs)


class CallerSlots:
    """The caller's side of a mapped region: which request in flight holds which slot.

    A slot is freed only when its request is answered (:meth:`answered`), or when the request never
    left (:meth:`release`); a request the caller gave up on keeps its slot until the server says it
    will not write into it, or the connection ends (:meth:`close`)."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self._held: dict[str, int] = {}

    def place(self, request_id: str, request: pb.Request) -> bytes | None:
        """``request`` serialized with its docs in a slot, or None: send it as it is."""
        placed = put_docs(self.region, request)
        if placed is None:
            return None
        data, self._held[request_id] = placed
        return data

    def holds(self, request_id: str) -> bool:
        return request_id in self._held

    def __bool__(self) -> bool:
        return bool(self._held)

    def release(self, request_id: str) -> None:
        """The request never reached the server: its slot is free again."""
        offset = self._held.pop(request_id, None)
        if offset is not None:
            self.region.free(offset)

    def answered(self, response: pb.Response) -> None:
        """The server answered: the response's docs come out of the slot (if they are there), and
        the slot is free. A slot the caller cannot read makes the response an error."""
        offset = self._held.pop(response.request_id, None)
        if offset is None:
            return
        if response.HasField("shared"):
            wrong = take_docs(self.region, response)
            if wrong is not None:
                response.ClearField("shared")
                response.error = error_details(
                    UnavailableError(f"the server's response is unreadable: {wrong}")
                )
        self.region.free(offset)

    def close(self) -> None:
        """The connection ended: the server writes no more, and nothing left in the region is read."""
        self._held.clear()
        self.region.close()
