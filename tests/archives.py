"""Archives of every format the application reads, built in the tests.

RAR 4 and RAR 5 are written here, stored (uncompressed), without any proprietary tool:
enough of the two formats for libarchive to read them (the marker, a main header, a file
header with CRCs before each member's bytes, the end header), plus the flags that make
one encrypted or a volume of several. tar comes from Python's tarfile, 7z from
libarchive's writer (py7zr for an encrypted one).

RAR 4 ("RAR 2.9" format): https://www.rarlab.com/technote.htm (older layout); every
header starts with CRC16 (the low half of the CRC-32 of the rest of the header), type,
flags and size. RAR 5: https://www.rarlab.com/technote.htm; headers start with a
CRC-32, and sizes and flags are variable-length integers (vints).
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass

RAR4_MARKER = b"Rar!\x1a\x07\x00"
RAR5_MARKER = b"Rar!\x1a\x07\x01\x00"
UNIX = 3  # RAR 4 host OS
RAR5_UNIX = 1
STORE = 0x30  # RAR 4 method: stored
DOS_TIME = (2024 - 1980) << 25 | 1 << 21 | 1 << 16  # 2024-01-01 00:00


@dataclass(frozen=True)
class Entry:
    """One member: a file (data), a folder, or a symbolic link to ``target``."""

    name: str
    data: bytes = b""
    folder: bool = False
    target: str | None = None
    encrypted: bool = False


def _entries(members) -> list[Entry]:
    if isinstance(members, dict):
        return [Entry(name, data) for name, data in members.items()]
    return list(members)


def _rar4_header(kind: int, flags: int, body: bytes) -> bytes:
    rest = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest


def rar4(members, *, volume: bool = False, encrypted_headers: bool = False) -> bytes:
    """A RAR 4 archive of ``members`` (a dict name -> bytes, or Entry objects), stored."""
    flags = (0x0001 if volume else 0) | (0x0080 if encrypted_headers else 0)
    out = [RAR4_MARKER, _rar4_header(0x73, flags, b"\0" * 6)]
    for e in _entries(members):
        name = e.name.encode()
        if e.folder:
            mode, data, fflags = stat.S_IFDIR | 0o755, b"", 0xE0
        elif e.target is not None:
            mode, data, fflags = stat.S_IFLNK | 0o777, e.target.encode(), 0
        else:
            mode, data, fflags = stat.S_IFREG | 0o644, e.data, 0
        packed = data
        if e.encrypted:
            fflags |= 0x04 | 0x400  # password, salt present
            packed = os.urandom(-(-len(data) // 16) * 16 or 16)
        body = struct.pack(
            "<IIBIIBBHI", len(packed), len(data), UNIX, zlib.crc32(data), DOS_TIME, 29, STORE, len(name), mode
        ) + name + (os.urandom(8) if e.encrypted else b"")
        out += [_rar4_header(0x74, 0x8000 | fflags, body), packed]
    out.append(_rar4_header(0x7B, 0x4000, b""))
    return b"".join(out)


def vint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _rar5_header(fields: bytes) -> bytes:
    size = vint(len(fields))
    return struct.pack("<I", zlib.crc32(size + fields)) + size + fields


def _record(kind: int, body: bytes) -> bytes:
    content = vint(kind) + body
    return vint(len(content)) + content


def rar5(members, *, volume: bool = False, encrypted_headers: bool = False, solid: bool = False) -> bytes:
    """A RAR 5 archive of ``members`` (a dict name -> bytes, or Entry objects), stored."""
    out = [RAR5_MARKER]
    if encrypted_headers:  # the archive encryption header: version 0, flags 0, KDF count, salt
        out.append(_rar5_header(vint(4) + vint(0) + vint(0) + vint(0) + bytes([15]) + os.urandom(16)))
    archive_flags = (0x0001 if volume else 0) | (0x0004 if solid else 0)
    out.append(_rar5_header(vint(1) + vint(0) + vint(archive_flags)))
    for e in _entries(members):
        name = e.name.encode()
        extra = b""
        if e.folder:
            file_flags, attributes, data = 0x0001, stat.S_IFDIR | 0o755, b""
        elif e.target is not None:
            file_flags, attributes, data = 0x0004, stat.S_IFLNK | 0o777, b""
            target = e.target.encode()
            extra += _record(0x05, vint(1) + vint(0) + vint(len(target)) + target)  # Unix symlink
        else:
            file_flags, attributes, data = 0x0004, stat.S_IFREG | 0o644, e.data
        packed = data
        if e.encrypted:  # version 0, flags 0, KDF count, salt, IV
            extra += _record(0x01, vint(0) + vint(0) + bytes([15]) + os.urandom(32))
            packed = os.urandom(-(-len(data) // 16) * 16 or 16)
        header_flags = (0x0001 if extra else 0) | 0x0002  # libarchive wants a data area, if empty
        fields = vint(2) + vint(header_flags)
        if extra:
            fields += vint(len(extra))
        fields += vint(len(packed))
        compression = 0x0040 if solid else 0  # version 0, method 0 (store)
        fields += vint(file_flags) + vint(len(data)) + vint(attributes)
        if file_flags & 0x0004:
            fields += struct.pack("<I", zlib.crc32(data))
        fields += vint(compression) + vint(RAR5_UNIX) + vint(len(name)) + name + extra
        out += [_rar5_header(fields), packed]
    out.append(_rar5_header(vint(5) + vint(0) + vint(0)))
    return b"".join(out)


# --- The other formats, for the same tests ---------------------------------------------


def tar(members, compression: str = "") -> bytes:
    """A tar (compression "", "gz" or "xz") of ``members`` (a dict name -> bytes, or Entry
    objects; an Entry's ``target`` makes a symbolic link), by Python's tarfile."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as archive:
        for e in _entries(members):
            info = tarfile.TarInfo(e.name)
            if e.folder:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif e.target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, e.target
                archive.addfile(info)
            else:
                info.size = len(e.data)
                archive.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def seven_zip(members) -> bytes:
    """A 7z (LZMA2, solid) of ``members`` (a dict name -> bytes), by libarchive's writer."""
    import io

    import libarchive

    buf = io.BytesIO()
    with libarchive.custom_writer(buf.write, "7zip") as archive:
        for name, data in dict(members).items():
            archive.add_file_from_memory(name, len(data), data)
    return buf.getvalue()


def encrypted_seven_zip(members, *, header_encryption: bool = False) -> bytes:
    """A 7z encrypted with a password (AES-256), by py7zr: libarchive cannot write one."""
    import io

    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password="secret", header_encryption=header_encryption) as archive:
        for name, data in dict(members).items():
            archive.writestr(data, name)
    return buf.getvalue()
