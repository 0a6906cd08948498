"""Reading a study from a zip archive, safely, without writing anything to disk.

Members are read into memory one at a time after the archive's directory has been
checked against ``ArchiveLimits``: member count, each member's and the total
uncompressed size, and the compression ratio are bounded before anything is
decompressed, and every read is capped again in case a header lies. Paths that climb
out of the archive (``../x``, absolute paths) and encrypted members make the whole
archive unreadable. Folders are allowed; macOS ``__MACOSX`` metadata, hidden files and
``DICOMDIR`` are skipped, as are members that are not PNG, JPEG or DICOM files.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from .headers import PixelBudget
from .imaging import MAX_DECODED_PIXELS, CTSlice, UnreadableImage, read_slices, sniff_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 2000  # files in the archive (folders not counted)
    max_member_bytes: int = 64 * 1024 * 1024  # uncompressed size of one file
    max_total_bytes: int = 1024 * 1024 * 1024  # uncompressed size of all files together
    max_ratio: float = 200.0  # uncompressed / compressed size of one file
    max_slices: int = 1000
    max_pixels: int = MAX_DECODED_PIXELS  # decoded pixels of all slices together (headers.PixelBudget)


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


def _check_path(name: str) -> PurePosixPath:
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised) or ".." in path.parts:
        raise UnreadableImage(
            f"the zip contains an unsafe path ({printable_name(name)!r})",
            code="unsafe_path",
            params={"path": printable_name(name)},
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
    """Decode one file of a zip or folder; its errors name the file."""
    try:
        return read_slices(data, name, budget)
    except UnreadableImage as exc:
        raise in_member(name, exc) from exc


def read_zip(source: bytes | BinaryIO, limits: ArchiveLimits = ArchiveLimits()) -> list[CTSlice]:
    """A zip archive of slices -> ordered CTSlices (raises UnreadableImage)."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise UnreadableImage("not a valid zip archive", code="not_a_zip") from exc
    with archive:
        members = []
        for info in archive.infolist():
            path = _check_path(info.filename)
            if info.is_dir() or _is_skipped(path):
                continue
            if info.flag_bits & 0x1:
                raise UnreadableImage("the zip is encrypted; upload an unencrypted archive", code="encrypted_zip")
            members.append((path, info))
        if len(members) > limits.max_members:
            raise UnreadableImage(
                f"the zip holds {len(members)} files; the limit is {limits.max_members}",
                code="zip_too_many_files",
                params={"count": len(members), "limit": limits.max_members},
            )
        total = sum(info.file_size for _, info in members)
        if total > limits.max_total_bytes:
            raise UnreadableImage(
                f"the zip unpacks to {total:,} bytes; the limit is {limits.max_total_bytes:,}",
                code="zip_too_large",
                params={"size_bytes": total, "limit_bytes": limits.max_total_bytes},
            )
        slices: list[CTSlice] = []
        budget = PixelBudget(limits.max_pixels)
        for path, info in members:
            if info.file_size > limits.max_member_bytes:
                raise UnreadableImage(
                    f"{path} unpacks to {info.file_size:,} bytes; the limit is {limits.max_member_bytes:,}",
                    code="zip_member_too_large",
                    params={"member": str(path), "size_bytes": info.file_size, "limit_bytes": limits.max_member_bytes},
                )
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                raise UnreadableImage(
                    f"{path} is compressed suspiciously well (a zip bomb?)",
                    code="zip_bomb",
                    params={"member": str(path)},
                )
            try:
                with archive.open(info) as fh:
                    data = fh.read(limits.max_member_bytes + 1)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as exc:
                raise UnreadableImage(
                    f"{path} in the zip is damaged ({exc})",
                    code="damaged_zip_member",
                    params={"member": str(path), "detail": str(exc)},
                ) from exc
            if len(data) > limits.max_member_bytes:
                raise UnreadableImage(
                    f"{path} unpacks to more than {limits.max_member_bytes:,} bytes",
                    code="zip_member_over_limit",
                    params={"member": str(path), "limit_bytes": limits.max_member_bytes},
                )
            if sniff_kind(data[:132], path.name) is None:
                log.info("skipping %s: not a PNG, JPEG or DICOM file", path)
                continue
            slices.extend(_read_member(data, str(path), budget))
            if len(slices) > limits.max_slices:
                raise UnreadableImage(
                    f"the zip holds more than {limits.max_slices} slices",
                    code="zip_too_many_slices",
                    params={"limit": limits.max_slices},
                )
    if not slices:
        raise UnreadableImage("the zip holds no PNG, JPEG or DICOM slices", code="zip_without_slices")
    return with_slice_spacing(order_slices(slices))
