"""Reading a study from an archive (zip, RAR, 7z, tar), safely, without writing anything to disk.

Every format is read through one interface: an ``Archive`` lists its ``Member``s (name,
declared size, compressed size where the format records one, type, encrypted or not)
and reads each one into memory with a cap. ``read_archive`` applies the same limits and
checks to every format, in two passes:

1. The listing, before anything is decompressed: paths that climb out of the archive
   (``../x``, absolute paths), encrypted members, links, devices and archives inside
   the archive make the whole archive unreadable; folders, macOS ``__MACOSX`` metadata,
   hidden files and ``DICOMDIR`` are skipped; the member count, each member's and the
   total declared size, each member's compression ratio and the whole archive's
   (declared size over the archive's own size) are bounded by ``ArchiveLimits``.
2. The reading: each member is read with a cap (the per-member limit and what is left
   of the total, whichever is smaller), so that a header that lies, or a solid archive
   whose members share one compressed stream, cannot make memory grow past the limits;
   members that are not PNG, JPEG or DICOM files are skipped; every slice is charged to
   the decoded-pixel budget (``headers.PixelBudget``) before it is decoded.

The slices are ordered by DICOM position, then InstanceNumber, then naturally by name.
The zip reader is here; RAR, 7z and tar go through libarchive (``ml.libarchives``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import logging
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

import numpy as np

from .headers import PixelBudget
from .imaging import MAX_DECODED_PIXELS, CTSlice, UnreadableImage, read_slices, sniff_kind

log = logging.getLogger(__name__)

#: How archives begin (zip, RAR 4, RAR 5, 7z, gzip, xz, bzip2), and tar's "ustar" at byte 257.
ARCHIVE_MAGICS = {
    b"PK\x03\x04": "zip",
    b"PK\x05\x06": "zip",  # an empty zip
    b"Rar!\x1a\x07\x00": "RAR",
    b"Rar!\x1a\x07\x01\x00": "RAR",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}
TAR_MAGIC_AT = 257
#: The bytes of a file's start that tell its kind: enough for tar's magic.
HEAD_BYTES = 512
#: Upload names of the archives read, and the kind each one's name says.
ARCHIVE_SUFFIXES = {
    ".zip": "zip",
    ".rar": "RAR",
    ".7z": "7z",
    ".tar": "tar",
    ".tar.gz": "tar",
    ".tgz": "tar",
    ".tar.xz": "tar",
    ".txz": "tar",
}
#: Names of archives inside an archive, which are refused rather than opened.
NESTED_ARCHIVE_SUFFIXES = (*ARCHIVE_SUFFIXES, ".gz", ".xz", ".bz2", ".tbz2", ".cab", ".arj", ".lzh", ".z01", ".r00")


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 2000  # files in the archive (folders not counted)
    max_member_bytes: int = 64 * 1024 * 1024  # uncompressed size of one file
    max_total_bytes: int = 1024 * 1024 * 1024  # uncompressed size of all files together
    max_ratio: float = 200.0  # uncompressed / compressed size of one file, and of the whole archive
    max_slices: int = 1000
    max_pixels: int = MAX_DECODED_PIXELS  # decoded pixels of all slices together (headers.PixelBudget)


class MemberType(enum.Enum):
    FILE = "file"
    FOLDER = "folder"
    LINK = "link"  # symbolic or hard link: never followed
    SPECIAL = "special"  # device, FIFO, socket


@dataclass(frozen=True)
class Member:
    """One entry of an archive, as its format lists it.

    name: the path as stored (any separator); size: the declared uncompressed size in
    bytes, None when the format does not say; compressed_size: the member's own
    compressed size, None when the format does not record one (tar.gz, a solid 7z);
    read(cap): the member's bytes, at most ``cap + 1`` of them (one more than the cap
    tells that it is over), valid only while the archive's ``members()`` iteration
    stands on this member.
    """

    name: str
    size: int | None
    compressed_size: int | None
    type: MemberType
    encrypted: bool
    read: Callable[[int], bytes]


class Archive(Protocol):
    """What ``read_archive`` needs of a format."""

    kind: str  # how messages name the format: "zip", "RAR", "7z", "tar"
    size: int  # bytes of the archive itself (for the whole archive's compression ratio)

    def members(self) -> Iterator[Member]:
        """A fresh pass over the members, in stored order; raises UnreadableImage."""
        ...


def archive_kind(head: bytes, name: str = "") -> str | None:
    """'zip', 'RAR', '7z', 'tar' (also compressed: .tar.gz, .tar.xz), 'gzip', 'xz',
    'bzip2' or None, from a file's first bytes (HEAD_BYTES of them for tar) and, for
    gzip and xz streams, its name."""
    for magic, kind in ARCHIVE_MAGICS.items():
        if head.startswith(magic):
            if kind in ("gzip", "xz") and name.lower().endswith((".tar.gz", ".tgz", ".tar.xz", ".txz")):
                return "tar"
            return kind
    if head[TAR_MAGIC_AT : TAR_MAGIC_AT + 5] == b"ustar":
        return "tar"
    return None


def suffix_kind(name: str) -> str | None:
    """The archive kind a file's name says ('zip', 'RAR', '7z', 'tar'), or None."""
    lower = name.lower()
    return next((kind for suffix, kind in ARCHIVE_SUFFIXES.items() if lower.endswith(suffix)), None)


def natural_key(text: str) -> list:
    """Sort key that orders 'slice2' before 'slice10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _is_skipped(path: PurePosixPath) -> bool:
    parts = path.parts
    return (
        any(p.startswith(".") or p == "__MACOSX" for p in parts)
        or path.name.upper() == "DICOMDIR"
    )


def printable_name(name: str) -> str:
    """A member name as it may be shown and written: control characters (CR, LF, tab, …)
    and invisible format characters (such as U+202E, which reverses the text after it)
    become "_"."""
    return "".join("_" if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in name)


def _check_path(name: str, kind: str = "zip") -> PurePosixPath:
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised) or ".." in path.parts:
        raise UnreadableImage(
            f"the {kind} contains an unsafe path ({printable_name(name)!r})",
            code="unsafe_path",
            params={"kind": kind, "path": printable_name(name)},
        )
    return PurePosixPath(printable_name(normalised))


def in_member(member: str, exc: UnreadableImage) -> UnreadableImage:
    """The error for a whole archive or folder when one of its files is unreadable: it
    names the file and keeps that file's error under params["reason"]."""
    return UnreadableImage(f"{member}: {exc}", code="unreadable_member", params={"member": member, "reason": exc})


def order_slices(slices: list[CTSlice]) -> list[CTSlice]:
    """Order slices along the body axis: head to feet by DICOM position when every slice
    has one (the position grows towards the head), else by InstanceNumber when every
    slice has one, else naturally by name."""
    if slices and all(s.position_mm is not None for s in slices):
        return sorted(slices, key=lambda s: (-s.position_mm, natural_key(s.name)))
    if slices and all(s.instance_number is not None for s in slices):
        return sorted(slices, key=lambda s: (s.instance_number, natural_key(s.name)))
    return sorted(slices, key=lambda s: natural_key(s.name))


def with_slice_spacing(slices: list[CTSlice]) -> list[CTSlice]:
    """Ordered slices of one series, each given the median distance between neighbouring
    positions as its thickness (the spacing that makes their volumes add up without gaps
    or overlap), when every slice has a position and the distance is positive."""
    positions = [s.position_mm for s in slices]
    if len(slices) < 2 or any(p is None for p in positions):
        return slices
    gaps = np.abs(np.diff(np.asarray(positions, dtype=float)))
    spacing = float(np.median(gaps))
    if not spacing > 0:
        return slices
    return [dataclasses.replace(s, slice_thickness_mm=spacing) for s in slices]


def read_folder(folder: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[CTSlice]:
    """Every PNG, JPEG and DICOM slice below ``folder`` (hidden files and DICOMDIR skipped),
    ordered like a zip study. Raises UnreadableImage."""
    folder = Path(folder)
    files = [
        p for p in sorted(folder.rglob("*"))
        if p.is_file() and not _is_skipped(PurePosixPath(p.relative_to(folder).as_posix()))
    ]
    if len(files) > limits.max_members:
        raise UnreadableImage(
            f"the folder holds {len(files)} files; the limit is {limits.max_members}",
            code="folder_too_many_files",
            params={"count": len(files), "limit": limits.max_members},
        )
    slices: list[CTSlice] = []
    budget = PixelBudget(limits.max_pixels)
    for path in files:
        if path.stat().st_size > limits.max_member_bytes:
            raise UnreadableImage(
                f"{path} is larger than {limits.max_member_bytes:,} bytes",
                code="folder_file_too_large",
                params={"path": str(path), "limit_bytes": limits.max_member_bytes},
            )
        with open(path, "rb") as fh:
            head = fh.read(132)
        name = path.relative_to(folder).as_posix()
        if sniff_kind(head, name) is None:
            continue
        slices.extend(_read_member(path.read_bytes(), name, budget))
        if len(slices) > limits.max_slices:
            raise UnreadableImage(
                f"the folder holds more than {limits.max_slices} slices",
                code="folder_too_many_slices",
                params={"limit": limits.max_slices},
            )
    if not slices:
        raise UnreadableImage(
            f"{folder} holds no PNG, JPEG or DICOM slices", code="folder_without_slices", params={"folder": str(folder)}
        )
    return with_slice_spacing(order_slices(slices))


def _read_member(data: bytes, name: str, budget: PixelBudget) -> list[CTSlice]:
    """Decode one file of an archive or folder; its errors name the file."""
    try:
        return read_slices(data, name, budget)
    except UnreadableImage as exc:
        raise in_member(name, exc) from exc


# --- The checks and limits every archive shares -----------------------------------------


@dataclass(frozen=True)
class _Listed:
    index: int  # the member's place in members()
    path: PurePosixPath


def _listing(archive: Archive, limits: ArchiveLimits) -> list[_Listed]:
    """The members to read, checked from the archive's listing alone (pass 1)."""
    kind = archive.kind
    listed: list[_Listed] = []
    count = total = 0
    with contextlib.closing(archive.members()) as members:
        for index, member in enumerate(members):
            path = _check_path(member.name, kind)
            if member.type is MemberType.FOLDER or _is_skipped(path):
                continue
            if member.encrypted:
                raise UnreadableImage(
                    f"the {kind} is encrypted; upload an unencrypted archive",
                    code="archive_encrypted",
                    params={"kind": kind},
                )
            if member.type is MemberType.LINK:
                raise UnreadableImage(
                    f"{path} in the {kind} is a link; links are not followed, so put the file itself in the archive",
                    code="archive_link",
                    params={"kind": kind, "member": str(path)},
                )
            if member.type is MemberType.SPECIAL:
                raise UnreadableImage(
                    f"{path} in the {kind} is a device or pipe, not a file",
                    code="archive_special_member",
                    params={"kind": kind, "member": str(path)},
                )
            if path.name.lower().endswith(NESTED_ARCHIVE_SUFFIXES) and not path.name.lower().endswith(".nii.gz"):
                raise _nested(path, kind)
            count += 1
            if count <= limits.max_members:
                listed.append(_Listed(index, path))
            size = member.size or 0
            if size > limits.max_member_bytes:
                raise UnreadableImage(
                    f"{path} unpacks to {size:,} bytes; the limit is {limits.max_member_bytes:,}",
                    code="archive_member_too_large",
                    params={"member": str(path), "size_bytes": size, "limit_bytes": limits.max_member_bytes},
                )
            total += size
            if total > limits.max_total_bytes:
                raise UnreadableImage(
                    f"the {kind} unpacks to more than its limit of {limits.max_total_bytes:,} bytes",
                    code="archive_too_large",
                    params={"kind": kind, "limit_bytes": limits.max_total_bytes},
                )
            if member.compressed_size and size / member.compressed_size > limits.max_ratio:
                raise UnreadableImage(
                    f"{path} is compressed suspiciously well (a zip bomb?)",
                    code="archive_bomb",
                    params={"member": str(path)},
                )
            if total > limits.max_ratio * max(archive.size, 1):
                raise UnreadableImage(
                    f"the {kind} unpacks to more than {limits.max_ratio:g} times its size (a zip bomb?)",
                    code="archive_ratio",
                    params={"kind": kind, "ratio": f"{limits.max_ratio:g}"},
                )
    if count > limits.max_members:
        raise UnreadableImage(
            f"the {kind} holds {count} files; the limit is {limits.max_members}",
            code="archive_too_many_files",
            params={"kind": kind, "count": count, "limit": limits.max_members},
        )
    return listed


def _nested(path: PurePosixPath, kind: str) -> UnreadableImage:
    return UnreadableImage(
        f"{path} in the {kind} is itself an archive; archives inside archives are not opened, "
        "so put its slices in the outer archive",
        code="nested_archive",
        params={"kind": kind, "member": str(path)},
    )


def read_archive(archive: Archive, limits: ArchiveLimits = ArchiveLimits()) -> list[CTSlice]:
    """The slices of any archive (zip, RAR, 7z, tar), checked and ordered alike; see the
    module's docstring. Raises UnreadableImage."""
    kind = archive.kind
    listed = {item.index: item.path for item in _listing(archive, limits)}
    slices: list[CTSlice] = []
    budget = PixelBudget(limits.max_pixels)
    total = 0
    with contextlib.closing(archive.members()) as members:
        for index, member in enumerate(members):
            path = listed.get(index)
            if path is None:
                continue
            if _check_path(member.name, kind) != path:
                raise UnreadableImage(
                    f"the {kind} is damaged (its listing changed between two readings)",
                    code="damaged_archive",
                    params={"kind": kind, "detail": "listing changed"},
                )
            cap = min(limits.max_member_bytes, limits.max_total_bytes - total)
            data = member.read(cap)
            if len(data) > limits.max_member_bytes:
                raise UnreadableImage(
                    f"{path} unpacks to more than {limits.max_member_bytes:,} bytes",
                    code="archive_member_over_limit",
                    params={"member": str(path), "limit_bytes": limits.max_member_bytes},
                )
            total += len(data)
            if total > limits.max_total_bytes:
                raise UnreadableImage(
                    f"the {kind} unpacks to more than its limit of {limits.max_total_bytes:,} bytes",
                    code="archive_too_large",
                    params={"kind": kind, "limit_bytes": limits.max_total_bytes},
                )
            if sniff_kind(data[:132], path.name) is None:
                if archive_kind(data[:HEAD_BYTES]) is not None and not path.name.lower().endswith(".nii.gz"):
                    raise _nested(path, kind)
                log.info("skipping %s: not a PNG, JPEG or DICOM file", path)
                continue
            slices.extend(_read_member(data, str(path), budget))
            del data
            if len(slices) > limits.max_slices:
                raise UnreadableImage(
                    f"the {kind} holds more than {limits.max_slices} slices",
                    code="archive_too_many_slices",
                    params={"kind": kind, "limit": limits.max_slices},
                )
    if not slices:
        raise UnreadableImage(
            f"the {kind} holds no PNG, JPEG or DICOM slices", code="archive_without_slices", params={"kind": kind}
        )
    return with_slice_spacing(order_slices(slices))


# --- Zip --------------------------------------------------------------------------------


#: A zip member's "made by" system whose external attributes hold a Unix mode (file type included).
UNIX_ZIP = 3


class ZipArchive:
    """A zip through Python's zipfile: the central directory gives each member's sizes."""

    kind = "zip"

    def __init__(self, archive: zipfile.ZipFile, size: int) -> None:
        self._zip = archive
        self.size = size

    def members(self) -> Iterator[Member]:
        for info in self._zip.infolist():
            file_type = stat.S_IFMT(info.external_attr >> 16) if info.create_system == UNIX_ZIP else 0
            if info.is_dir():
                type_ = MemberType.FOLDER
            elif file_type == stat.S_IFLNK:
                type_ = MemberType.LINK
            elif file_type not in (0, stat.S_IFREG):
                type_ = MemberType.SPECIAL
            else:
                type_ = MemberType.FILE
            yield Member(
                name=info.filename,
                size=info.file_size,
                compressed_size=info.compress_size,
                type=type_,
                encrypted=bool(info.flag_bits & 0x1),
                read=lambda cap, info=info: self._read(info, cap),
            )

    def _read(self, info: zipfile.ZipInfo, cap: int) -> bytes:
        try:
            with self._zip.open(info) as fh:
                return fh.read(cap + 1)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise UnreadableImage(
                f"{printable_name(info.filename)} in the zip is damaged ({exc})",
                code="damaged_archive_member",
                params={"kind": "zip", "member": printable_name(info.filename), "detail": str(exc)},
            ) from exc


def read_zip(source: bytes | BinaryIO, limits: ArchiveLimits = ArchiveLimits()) -> list[CTSlice]:
    """A zip archive of slices -> ordered CTSlices (raises UnreadableImage)."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise UnreadableImage("not a valid zip archive", code="not_an_archive", params={"kind": "zip"}) from exc
    with archive:
        return read_archive(ZipArchive(archive, size), limits)


def read_any_archive(source: bytes | BinaryIO, name: str, limits: ArchiveLimits = ArchiveLimits()) -> list[CTSlice]:
    """A zip, RAR, 7z or tar (.tar, .tar.gz / .tgz, .tar.xz / .txz) of slices, told apart
    by its first bytes -> ordered CTSlices (raises UnreadableImage)."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    kind = archive_kind(head, name)
    if kind == "zip":
        return read_zip(stream, limits)
    if kind in ("RAR", "7z", "tar"):
        from .libarchives import open_libarchive  # libarchive loads only when an archive needs it

        with open_libarchive(stream, kind) as archive:
            return read_archive(archive, limits)
    named = suffix_kind(name) or kind or "zip"
    raise UnreadableImage(f"not a valid {named} archive", code="not_an_archive", params={"kind": named})
