"""Reading a study from an archive (zip, RAR, 7z, tar) or a folder, safely, one slice at a time.

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
   the decoded-pixel budget (``headers.PixelBudget``) before it is decoded, and checked
   (the caller's ``check``, such as ``ctcheck.check_ct``) once decoded; a DICOM of
   uncompressed Hounsfield units is read from its header only (``read_slices`` with
   decode=False), which is all the check needs of it. Then its pixels are let go: what
   the study keeps is each slice's header and the file's bytes, in an unnamed temporary
   file (never a named path, gone when closed or when the process ends).
3. The slices are ordered by DICOM position, then InstanceNumber, then naturally by name,
   and each is decoded again from its file when it is reached (``StudySlices``): a study
   of 1,000 slices holds the pixels of one.

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
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

import numpy as np

from .headers import PixelBudget
from .imaging import MAX_DECODED_PIXELS, CTSlice, LazySlices, UnreadableImage, read_slices, sniff_kind

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


def study_order(slices: Sequence[CTSlice]) -> list[int]:
    """The indices of ``slices`` along the body axis: head to feet by DICOM position when
    every slice has one (the position grows towards the head), else by InstanceNumber
    when every slice has one, else naturally by name."""
    keys = range(len(slices))
    if slices and all(s.position_mm is not None for s in slices):
        return sorted(keys, key=lambda k: (-slices[k].position_mm, natural_key(slices[k].name)))
    if slices and all(s.instance_number is not None for s in slices):
        return sorted(keys, key=lambda k: (slices[k].instance_number, natural_key(slices[k].name)))
    return sorted(keys, key=lambda k: natural_key(slices[k].name))


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


# --- Studies read one slice at a time -----------------------------------------------------


class _Spool:
    """Files' bytes kept in an unnamed temporary file (gone when closed, or when the
    process ends), read back by (offset, length)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._end = 0

    def add(self, data: bytes) -> tuple[int, int]:
        self._file.seek(self._end)
        self._file.write(data)
        where = (self._end, len(data))
        self._end += len(data)
        return where

    def read(self, where: tuple[int, int]) -> bytes:
        offset, length = where
        self._file.seek(offset)
        return self._file.read(length)

    def close(self) -> None:
        self._file.close()


class _Files:
    """A folder's files, read back by path."""

    def read(self, where: Path) -> bytes:
        return Path(where).read_bytes()

    def close(self) -> None:
        pass


class StudySlices(LazySlices):
    """The slices of an archive or folder in study order, each decoded again from its
    file when it is reached (an archive's files wait in a ``_Spool``), so that a study
    holds one slice's pixels at a time, not all of them. Every file was read (decoded,
    or a DICOM of uncompressed HU from its header) and checked once when the study was
    read; ``headers`` keep what that found."""

    def __init__(self, headers: list[CTSlice], files: list, frames: list[int], source: _Spool | _Files) -> None:
        self.headers = headers
        self._files, self._frames, self._source = files, frames, source
        self._last: tuple[object, list[CTSlice]] | None = None  # the frames of a multi-frame file

    def close(self) -> None:
        self._last = None
        self._source.close()

    def _slice(self, position: int) -> CTSlice:
        where, header = self._files[position], self.headers[position]
        if self._last is not None and self._last[0] == where:
            decoded = self._last[1]
        else:
            # Checked against the budget when the study was read; one file's worth here.
            decoded = read_slices(self._source.read(where), header.name, PixelBudget(MAX_DECODED_PIXELS))
            self._last = (where, decoded) if len(decoded) > 1 else None
        frame = decoded[self._frames[position]]
        return dataclasses.replace(header, pixels=frame.pixels, hu=frame.hu)


class _Collector:
    """The first reading of a study's files: each is read (``_read_member``), charged to
    the pixel budget, checked (``check``, e.g. ctcheck.check_ct) and then let go, keeping where it
    lies and its slices' headers; ``study()`` orders them into StudySlices."""

    def __init__(
        self,
        limits: ArchiveLimits,
        check: Callable[[CTSlice], None] | None,
        source: _Spool | _Files,
        too_many: Callable[[], UnreadableImage],
    ) -> None:
        self._limits, self._check, self._source, self._too_many = limits, check, source, too_many
        self._budget = PixelBudget(limits.max_pixels)
        self._headers: list[CTSlice] = []
        self._files: list = []
        self._frames: list[int] = []

    def add(self, data: bytes, name: str, where=None) -> None:
        decoded = _read_member(data, name, self._budget)
        for ct in decoded:
            if self._check is not None:
                try:
                    self._check(ct)
                except UnreadableImage as exc:
                    raise in_member(ct.name, exc) from exc
        where = self._source.add(data) if where is None else where
        for frame, ct in enumerate(decoded):
            self._headers.append(ct.without_pixels())
            self._files.append(where)
            self._frames.append(frame)
        if len(self._headers) > self._limits.max_slices:
            raise self._too_many()

    @property
    def empty(self) -> bool:
        return not self._headers

    def study(self) -> StudySlices:
        order = study_order(self._headers)
        headers = with_slice_spacing([self._headers[k] for k in order])
        return StudySlices(
            headers, [self._files[k] for k in order], [self._frames[k] for k in order], self._source
        )


def read_folder(
    folder: Path, limits: ArchiveLimits = ArchiveLimits(), check: Callable[[CTSlice], None] | None = None
) -> StudySlices:
    """Every PNG, JPEG and DICOM slice below ``folder`` (hidden files and DICOMDIR skipped),
    ordered like a zip study and read again from its file when reached; each is decoded
    and passed to ``check`` once here. Raises UnreadableImage."""
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
    collector = _Collector(
        limits,
        check,
        _Files(),
        lambda: UnreadableImage(
            f"the folder holds more than {limits.max_slices} slices",
            code="folder_too_many_slices",
            params={"limit": limits.max_slices},
        ),
    )
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
        collector.add(path.read_bytes(), name, where=path)
    if collector.empty:
        raise UnreadableImage(
            f"{folder} holds no PNG, JPEG or DICOM slices", code="folder_without_slices", params={"folder": str(folder)}
        )
    return collector.study()


def _read_member(data: bytes, name: str, budget: PixelBudget) -> list[CTSlice]:
    """Read one file of an archive or folder as the first reading does: decoded, except
    a DICOM of uncompressed HU, whose headers are all the check needs (``read_slices``
    with decode=False); its errors name the file."""
    try:
        return read_slices(data, name, budget, decode=False)
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


def read_archive(
    archive: Archive, limits: ArchiveLimits = ArchiveLimits(), check: Callable[[CTSlice], None] | None = None
) -> StudySlices:
    """The slices of any archive (zip, RAR, 7z, tar), checked and ordered alike; see the
    module's docstring. Each file is decoded and passed to ``check`` once here, then kept
    in an unnamed temporary file and decoded again when its slice is reached. Raises
    UnreadableImage."""
    kind = archive.kind
    listed = {item.index: item.path for item in _listing(archive, limits)}
    spool = _Spool()
    collector = _Collector(
        limits,
        check,
        spool,
        lambda: UnreadableImage(
            f"the {kind} holds more than {limits.max_slices} slices",
            code="archive_too_many_slices",
            params={"kind": kind, "limit": limits.max_slices},
        ),
    )
    total = 0
    try:
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
                collector.add(data, str(path))
                del data
        if collector.empty:
            raise UnreadableImage(
                f"the {kind} holds no PNG, JPEG or DICOM slices", code="archive_without_slices", params={"kind": kind}
            )
    except BaseException:
        spool.close()
        raise
    return collector.study()


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


def read_zip(
    source: bytes | BinaryIO, limits: ArchiveLimits = ArchiveLimits(), check: Callable[[CTSlice], None] | None = None
) -> StudySlices:
    """A zip archive of slices -> its slices in study order (raises UnreadableImage)."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise UnreadableImage("not a valid zip archive", code="not_an_archive", params={"kind": "zip"}) from exc
    with archive:
        return read_archive(ZipArchive(archive, size), limits, check)


def read_any_archive(
    source: bytes | BinaryIO,
    name: str,
    limits: ArchiveLimits = ArchiveLimits(),
    check: Callable[[CTSlice], None] | None = None,
) -> StudySlices:
    """A zip, RAR, 7z or tar (.tar, .tar.gz / .tgz, .tar.xz / .txz) of slices, told apart
    by its first bytes -> its slices in study order, each passed to ``check`` (raises
    UnreadableImage)."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    kind = archive_kind(head, name)
    if kind == "zip":
        return read_zip(stream, limits, check)
    if kind in ("RAR", "7z", "tar"):
        from .libarchives import open_libarchive  # libarchive loads only when an archive needs it

        with open_libarchive(stream, kind) as archive:
            return read_archive(archive, limits, check)
    named = suffix_kind(name) or kind or "zip"
    raise UnreadableImage(f"not a valid {named} archive", code="not_an_archive", params={"kind": named})
