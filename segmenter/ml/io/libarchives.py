"""RAR (4 and 5), 7z and tar (plain, gzip or xz) archives through libarchive, as ``archive.Archive``s.

libarchive (Debian's ``libarchive13``, through the ``libarchive-c`` bindings) streams
each member's bytes from the upload, block by block, into memory; nothing is ever
extracted to disk, and only the one format the upload's first bytes name is enabled (no
"all formats", which would include mtree, whose entries name files on the server's own
disk). ``archive.read_archive`` applies the limits; this module only lists and reads.

libarchive 3.6 reads some archives that it cannot read correctly, so their headers are
checked here first: a RAR volume of several (it would read the first part of a split
member as if it were all of it), a RAR 5 member encrypted with a password (3.6 does not
flag it and hands back the ciphertext), a 7z whose header lies past the upload's end (a
first volume, or a cut-short archive).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import struct
from collections.abc import Iterator
from typing import BinaryIO

import libarchive.ffi as ffi
from libarchive.exception import ArchiveError

from ..errors import UnreadableImage
from .archive import Member, MemberType, printable_name

log = logging.getLogger(__name__)

#: Bytes handed to libarchive per read of the upload, and read out of a member per call.
BLOCK_BYTES = 64 * 1024
#: The formats (and for tar, the compression filters) enabled for each kind.
FORMATS = {"RAR": ("rar", "rar5"), "7z": ("7zip",), "tar": ("tar",)}
FILTERS = {"tar": ("gzip", "xz")}
RAR4_MARKER = b"Rar!\x1a\x07\x00"
RAR5_MARKER = b"Rar!\x1a\x07\x01\x00"
SEVEN_ZIP_START_HEADER = 32  # signature, version, CRC, next-header offset, size, CRC

_entry_is_encrypted = ffi.libarchive.archive_entry_is_encrypted
_entry_is_encrypted.argtypes = [ffi.c_archive_entry_p]
_entry_is_encrypted.restype = ctypes.c_int


def _encrypted(kind: str) -> UnreadableImage:
    return UnreadableImage(
        f"the {kind} is encrypted; upload an unencrypted archive", code="archive_encrypted", params={"kind": kind}
    )


def _multi_volume(kind: str) -> UnreadableImage:
    return UnreadableImage(
        f"the {kind} is one volume of several, or cut short; upload the study as one complete archive",
        code="archive_multi_volume",
        params={"kind": kind},
    )


def _damaged(kind: str, exc: ArchiveError) -> UnreadableImage:
    if "ncrypt" in str(exc.msg) or "passphrase" in str(exc.msg).lower():
        return _encrypted(kind)
    return UnreadableImage(
        f"the {kind} is damaged ({exc.msg})", code="damaged_archive", params={"kind": kind, "detail": str(exc.msg)}
    )


# --- What libarchive 3.6 would get wrong ------------------------------------------------


def _vint(data: bytes, at: int) -> tuple[int, int]:
    """A RAR 5 variable-length integer at ``at`` -> (value, the offset after it)."""
    value = shift = 0
    for k in range(at, min(at + 10, len(data))):
        value |= (data[k] & 0x7F) << shift
        shift += 7
        if not data[k] & 0x80:
            return value, k + 1
    raise IndexError("vint cut short")


def _check_rar4(stream: BinaryIO) -> None:
    """Walk the headers of a RAR 4 archive: refuse a volume, encrypted headers or members,
    and members split across volumes."""
    at = len(RAR4_MARKER)
    while True:
        stream.seek(at)
        head = stream.read(11)
        if len(head) < 7:
            return
        _, kind, flags, size = struct.unpack("<HBHH", head[:7])
        if size < 7:
            return  # damaged: libarchive says so
        if kind == 0x73:  # main header
            if flags & 0x0001:
                raise _multi_volume("RAR")
            if flags & 0x0080:
                raise _encrypted("RAR")
        elif kind == 0x74:  # file header
            if flags & 0x0004:
                raise _encrypted("RAR")
            if flags & 0x0003:
                raise _multi_volume("RAR")
        elif kind == 0x7B:  # end of archive
            return
        extra = struct.unpack("<I", head[7:11])[0] if flags & 0x8000 and len(head) == 11 else 0
        if extra and kind == 0x74 and flags & 0x0100:  # HIGH_PACK_SIZE
            stream.seek(at + 7 + 25)
            extra += struct.unpack("<I", stream.read(4).ljust(4, b"\0"))[0] << 32
        at += size + extra


def _check_rar5(stream: BinaryIO) -> None:
    """Walk the headers of a RAR 5 archive: refuse encrypted headers, a volume, members
    encrypted with a password, and members split across volumes."""
    at = len(RAR5_MARKER)
    while True:
        stream.seek(at)
        start = stream.read(4 + 3)
        if len(start) < 5:
            return
        try:
            size, fields_at = _vint(start, 4)
            stream.seek(at)
            header = stream.read(fields_at + size)
            kind, k = _vint(header, fields_at)
            flags, k = _vint(header, k)
            extra_size, data_size = 0, 0
            if flags & 0x0001:
                extra_size, k = _vint(header, k)
            if flags & 0x0002:
                data_size, k = _vint(header, k)
            if kind == 4:  # archive encryption header
                raise _encrypted("RAR")
            if kind == 1:  # main archive header
                archive_flags, k = _vint(header, k)
                if archive_flags & 0x0001:
                    raise _multi_volume("RAR")
            elif kind in (2, 3):  # file, service
                if flags & 0x0018:  # data continues from the previous volume, or in the next one
                    raise _multi_volume("RAR")
                k = len(header) - extra_size
                while k < len(header):
                    record_size, body = _vint(header, k)
                    record_kind, _ = _vint(header, body)
                    if record_kind == 0x01 and kind == 2:  # file encryption record
                        raise _encrypted("RAR")
                    k = body + record_size
            elif kind == 5:  # end of archive
                return
        except IndexError:
            return  # damaged: libarchive says so
        at += fields_at + size + data_size


def _check_7z(stream: BinaryIO, size: int) -> None:
    """A 7z's header sits at its end; a first volume or a cut-short file has none."""
    stream.seek(12)
    offset, length = struct.unpack("<QQ", stream.read(16).ljust(16, b"\0"))
    if SEVEN_ZIP_START_HEADER + offset + length > size:
        raise _multi_volume("7z")


# --- Reading ----------------------------------------------------------------------------


@contextlib.contextmanager
def _reader(stream: BinaryIO, kind: str) -> Iterator[int]:
    """A libarchive read handle over ``stream`` from its start, with ``kind``'s format only."""
    buffer = ctypes.create_string_buffer(BLOCK_BYTES)
    failure: list[BaseException] = []

    def read(archive_p, context, out):
        try:
            data = stream.read(BLOCK_BYTES)
        except Exception as exc:  # an exception must not cross into C; re-raised below
            failure.append(exc)
            return ffi.ARCHIVE_FATAL
        ctypes.memmove(buffer, data, len(data))
        ctypes.cast(out, ctypes.POINTER(ctypes.c_void_p))[0] = ctypes.cast(buffer, ctypes.c_void_p)
        return len(data)

    def seek(archive_p, context, offset, whence):
        try:
            return stream.seek(offset, whence)
        except Exception as exc:
            failure.append(exc)
            return ffi.ARCHIVE_FATAL

    read_cb, seek_cb = ffi.READ_CALLBACK(read), ffi.SEEK_CALLBACK(seek)
    stream.seek(0)
    archive_p = ffi.read_new()
    try:
        for name in FILTERS.get(kind, ()):
            ffi.get_read_filter_function(name)(archive_p)
        for name in FORMATS[kind]:
            ffi.get_read_format_function(name)(archive_p)
        ffi.read_set_seek_callback(archive_p, seek_cb)
        try:
            ffi.read_open(archive_p, None, ffi.NO_OPEN_CB, read_cb, ffi.NO_CLOSE_CB)
        except ArchiveError as exc:
            raise _damaged(kind, exc) from exc
        yield archive_p
        if failure:
            raise failure[0]
    finally:
        ffi.read_free(archive_p)


class LibArchive:
    """A RAR, 7z or tar archive read by libarchive (see ``archive.Archive``)."""

    def __init__(self, stream: BinaryIO, kind: str, size: int) -> None:
        self._stream = stream
        self.kind = kind
        self.size = size

    def members(self) -> Iterator[Member]:
        kind = self.kind
        with _reader(self._stream, kind) as archive_p:
            entry = ffi.entry_new()
            try:
                while True:
                    try:
                        if ffi.read_next_header2(archive_p, entry) == ffi.ARCHIVE_EOF:
                            return
                    except ArchiveError as exc:
                        raise _damaged(kind, exc) from exc
                    yield self._member(archive_p, entry)
            finally:
                ffi.entry_free(entry)

    def _member(self, archive_p: int, entry: int) -> Member:
        name = ffi.entry_pathname_w(entry) or ffi.entry_pathname(entry) or b""
        if isinstance(name, bytes):
            name = name.decode("utf-8", errors="replace")
        mode = ffi.entry_filetype(entry)
        if ffi.entry_hardlink(entry) or mode == 0o120000:
            type_ = MemberType.LINK
        elif mode == 0o040000:
            type_ = MemberType.FOLDER
        elif mode == 0o100000:
            type_ = MemberType.FILE
        else:
            type_ = MemberType.SPECIAL
        return Member(
            name=name,
            size=ffi.entry_size(entry) if ffi.entry_size_is_set(entry) else None,
            compressed_size=None,  # libarchive does not say; the whole archive's ratio is checked
            type=type_,
            encrypted=bool(_entry_is_encrypted(entry)),
            read=lambda cap: self._read(archive_p, name, cap),
        )

    def _read(self, archive_p: int, name: str, cap: int) -> bytes:
        """At most cap + 1 bytes of the current member, one block at a time."""
        out = bytearray()
        block = ctypes.create_string_buffer(BLOCK_BYTES)
        try:
            while len(out) <= cap:
                n = ffi.read_data(archive_p, block, BLOCK_BYTES)
                if n == 0:
                    break
                out += block.raw[: min(n, cap + 1 - len(out))]
        except ArchiveError as exc:
            if "ncrypt" in str(exc.msg):
                raise _encrypted(self.kind) from exc
            member = printable_name(name)
            raise UnreadableImage(
                f"{member} in the {self.kind} is damaged ({exc.msg})",
                code="damaged_archive_member",
                params={"kind": self.kind, "member": member, "detail": str(exc.msg)},
            ) from exc
        return bytes(out)


@contextlib.contextmanager
def open_libarchive(stream: BinaryIO, kind: str) -> Iterator[LibArchive]:
    """``kind`` ('RAR', '7z', 'tar') of the seekable ``stream``, checked for what libarchive
    would miss (see the module's docstring). Raises UnreadableImage."""
    if not stream.seekable():
        stream = io.BytesIO(stream.read())
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    head = stream.read(len(RAR5_MARKER))
    if kind == "RAR":
        (_check_rar5 if head.startswith(RAR5_MARKER) else _check_rar4)(stream)
    elif kind == "7z":
        _check_7z(stream, size)
    stream.seek(0)
    yield LibArchive(stream, kind, size)
