"""RAR 4, RAR 5, 7z, tar, tar.gz and tar.xz read like zip: the same limits, checks and order.

Every archive is built here from real slices (tests/archives.py), never extracted to disk.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pydicom
import pytest

from segmenter.ml.io.archive import (
    Archive,
    ArchiveLimits,
    Member,
    MemberType,
    read_any_archive,
    read_archive,
)
from segmenter.ml.io.imaging import UnreadableImage
from tests.archives import Entry, encrypted_seven_zip, rar4, rar5, seven_zip, tar
from tests.conftest import zip_bytes

FORMATS = {
    "zip": (zip_bytes, "study.zip"),
    "RAR 4": (rar4, "study.rar"),
    "RAR 5": (rar5, "study.rar"),
    "7z": (seven_zip, "study.7z"),
    "tar": (tar, "study.tar"),
    "tar.gz": (lambda m: tar(m, "gz"), "study.tar.gz"),
    "tar.xz": (lambda m: tar(m, "xz"), "study.tar.xz"),
}
#: Formats whose test builder can write folders, links and hostile paths as they are.
RAW = {"RAR 4": (rar4, "s.rar"), "RAR 5": (rar5, "s.rar"), "tar": (tar, "s.tar"), "tar.gz": (lambda m: tar(m, "gz"), "s.tgz")}


def _read(fmt: str, members, limits: ArchiveLimits = ArchiveLimits(), table=FORMATS):
    build, name = table[fmt]
    return read_any_archive(build(members), name, limits)


@pytest.fixture
def jpegs(samples):
    return {k: samples.jpeg(k) for k in range(6)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_slices_from_folders_in_natural_order(fmt, jpegs):
    members = {"study/s10.jpg": jpegs[0], "study/s2.jpg": jpegs[1], "study/sub/s1.jpg": jpegs[2]}
    slices = _read(fmt, members)
    assert [s.name for s in slices] == ["study/s2.jpg", "study/s10.jpg", "study/sub/s1.jpg"]
    assert all(s.pixels.dtype.name == "uint8" and s.pixels.ndim == 2 for s in slices)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_skips_macos_metadata_hidden_files_dicomdir_and_other_files(fmt, jpegs):
    members = {
        "__MACOSX/study/._a.jpg": b"junk",
        "study/.DS_Store": b"junk",
        ".hidden/a.jpg": jpegs[0],
        "DICOMDIR": b"x" * 200,
        "notes.txt": b"hello",
        "study/a.jpg": jpegs[1],
    }
    assert [s.name for s in _read(fmt, members)] == ["study/a.jpg"]


@pytest.mark.parametrize("fmt", ["RAR 5", "7z", "tar.xz"])
def test_dicom_slices_in_any_format_are_ordered_by_position(fmt, samples):
    members = {}
    for k, z in enumerate([30.0, 10.0, 20.0]):
        ds = pydicom.dcmread(io.BytesIO(samples.dicom(k % 2)))
        ds.ImagePositionPatient = [0.0, 0.0, z]
        buf = io.BytesIO()
        ds.save_as(buf)
        members[f"IM{k}"] = buf.getvalue()
    slices = _read(fmt, members)
    assert [s.position_mm for s in slices] == [30.0, 20.0, 10.0]
    assert all(s.slice_thickness_mm == 10.0 for s in slices)


def test_folders_stored_as_entries_are_walked_not_refused(jpegs):
    entries = [Entry("study", folder=True), Entry("study/a.jpg", jpegs[0])]
    for build in (rar4, rar5, tar):
        assert [s.name for s in read_any_archive(build(entries), "s.rar" if build is not tar else "s.tar")] == [
            "study/a.jpg"
        ]


@pytest.mark.parametrize("fmt", RAW)
@pytest.mark.parametrize("name", ["../x.jpg", "study/../../x.jpg", "/etc/x.jpg"])
def test_every_format_refuses_paths_that_leave_the_archive(fmt, name, jpegs):
    with pytest.raises(UnreadableImage) as caught:
        _read(fmt, {"study/a.jpg": jpegs[0], name: jpegs[1]}, table=RAW)
    assert caught.value.code == "unsafe_path" and "unsafe path" in str(caught.value)


@pytest.mark.parametrize("fmt", RAW)
@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside.jpg", "a.jpg"])
def test_links_are_refused_and_never_followed(fmt, target, jpegs):
    entries = [Entry("study/a.jpg", jpegs[0]), Entry("study/link.jpg", target=target)]
    with pytest.raises(UnreadableImage, match="is a link") as caught:
        _read(fmt, entries, table=RAW)
    assert caught.value.code == "archive_link" and caught.value.params["member"] == "study/link.jpg"


@pytest.mark.parametrize("kind", [tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_hard_links_devices_and_pipes_in_a_tar_are_refused(kind, jpegs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        info = tarfile.TarInfo("study/a.jpg")
        info.size = len(jpegs[0])
        archive.addfile(info, io.BytesIO(jpegs[0]))
        odd = tarfile.TarInfo("study/odd")
        odd.type, odd.linkname = kind, "study/a.jpg"
        archive.addfile(odd)
    with pytest.raises(UnreadableImage) as caught:
        read_any_archive(buf.getvalue(), "s.tar.gz")
    assert caught.value.code in ("archive_link", "archive_special_member")


@pytest.mark.parametrize(
    "build",
    [
        lambda m: rar4([Entry(n, d, encrypted=True) for n, d in m.items()]),
        lambda m: rar4(m, encrypted_headers=True),
        lambda m: rar5([Entry(n, d, encrypted=True) for n, d in m.items()]),
        lambda m: rar5(m, encrypted_headers=True),
        lambda m: encrypted_seven_zip(m),
        lambda m: encrypted_seven_zip(m, header_encryption=True),
    ],
    ids=["RAR 4 member", "RAR 4 headers", "RAR 5 member", "RAR 5 headers", "7z member", "7z headers"],
)
def test_encrypted_archives_are_refused(build, jpegs):
    data = build({"study/a.jpg": jpegs[0]})
    with pytest.raises(UnreadableImage, match="encrypted; upload an unencrypted archive") as caught:
        read_any_archive(data, "study.7z" if data.startswith(b"7z") else "study.rar")
    assert caught.value.code == "archive_encrypted"


@pytest.mark.parametrize("build", [rar4, rar5], ids=["RAR 4", "RAR 5"])
def test_a_volume_of_a_multi_volume_rar_is_refused(build, jpegs):
    with pytest.raises(UnreadableImage, match="one volume of several") as caught:
        read_any_archive(build({"a.jpg": jpegs[0]}, volume=True), "study.part1.rar")
    assert caught.value.code == "archive_multi_volume"


def test_the_first_part_of_a_split_7z_is_refused_as_one_volume_of_several(jpegs):
    data = seven_zip({"a.jpg": jpegs[0], "b.jpg": jpegs[1]})
    with pytest.raises(UnreadableImage) as caught:
        read_any_archive(data[: len(data) // 2], "study.7z")
    assert caught.value.code == "archive_multi_volume"


@pytest.mark.parametrize("fmt", ["tar.gz", "tar.xz", "7z"])
def test_a_compression_bomb_is_refused_from_its_listing(fmt):
    build, name = FORMATS[fmt]
    data = build({"a.png": b"\0" * (8 * 1024 * 1024)})
    assert len(data) < 100_000
    with pytest.raises(UnreadableImage, match="zip bomb") as caught:
        read_any_archive(data, name)
    assert caught.value.code == "archive_ratio"


@pytest.mark.parametrize("fmt", FORMATS)
def test_too_many_members_are_refused_before_any_is_decoded(fmt):
    with pytest.raises(UnreadableImage, match="6 files; the limit is 5") as caught:
        _read(fmt, {f"{k}.png": b"x" for k in range(6)}, ArchiveLimits(max_members=5))
    assert caught.value.code == "archive_too_many_files"


@pytest.mark.parametrize("fmt", ["RAR 4", "7z", "tar.gz"])
def test_members_and_totals_over_the_limits_are_refused(fmt, jpegs):
    members = {f"{k}.jpg": jpegs[k] for k in range(3)}
    with pytest.raises(UnreadableImage) as caught:
        _read(fmt, members, ArchiveLimits(max_member_bytes=1000))
    assert caught.value.code == "archive_member_too_large"
    with pytest.raises(UnreadableImage) as caught:
        _read(fmt, members, ArchiveLimits(max_total_bytes=sum(map(len, members.values())) - 1))
    assert caught.value.code == "archive_too_large"


@pytest.mark.parametrize("fmt", ["RAR 5", "tar.gz"])
@pytest.mark.parametrize("inner", ["zip", "RAR 4", "7z", "tar.xz"])
def test_an_archive_inside_an_archive_is_refused_by_name_or_by_content(fmt, inner, jpegs):
    nested = FORMATS[inner][0]({"a.jpg": jpegs[0]})
    for name in ("study/inner" + FORMATS[inner][1].removeprefix("study"), "study/inner.bin"):
        with pytest.raises(UnreadableImage, match="itself an archive") as caught:
            _read(fmt, {"study/a.jpg": jpegs[1], name: nested}, table={**FORMATS, **RAW})
        assert caught.value.code == "nested_archive"


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_archive_without_slices_is_refused(fmt):
    with pytest.raises(UnreadableImage, match="holds no PNG, JPEG or DICOM slices") as caught:
        _read(fmt, {"readme.txt": b"hello", "__MACOSX/a.jpg": b"x"})
    assert caught.value.code == "archive_without_slices"


@pytest.mark.parametrize("fmt", ["RAR 5", "tar.xz"])
def test_the_decoded_pixel_budget_covers_every_format(fmt, jpegs):
    with pytest.raises(UnreadableImage) as caught:
        _read(fmt, {f"{k}.jpg": jpegs[k] for k in range(3)}, ArchiveLimits(max_pixels=300_000))
    assert caught.value.code == "unreadable_member" and caught.value.params["reason"].code == "pixel_budget"


@pytest.mark.parametrize(
    "name, data",
    [("a.rar", b"Rar!\x1a\x07\x00garbage"), ("a.rar", b"not a rar"), ("a.7z", b"7z\xbc\xaf\x27\x1c" + b"\xff" * 40),
     ("a.tar.gz", b"\x1f\x8b\x08broken"), ("a.tar", b"hello" * 200)],
)
def test_broken_archives_are_refused_with_a_reason(name, data):
    with pytest.raises(UnreadableImage) as caught:
        read_any_archive(data, name)
    assert caught.value.code in ("damaged_archive", "not_an_archive", "archive_multi_volume")


def test_a_rar_cut_short_names_the_damage(jpegs):
    data = rar5({"a.jpg": jpegs[0], "b.jpg": jpegs[1]})
    with pytest.raises(UnreadableImage) as caught:
        read_any_archive(data[: len(data) - 5000], "a.rar")
    assert caught.value.code in ("damaged_archive", "damaged_archive_member")


# --- The shared reader, through a format that lies --------------------------------------


class _Lying:
    """An archive whose headers declare tiny members that read as much as they are asked."""

    kind = "test"
    size = 10**9

    def __init__(self, count: int, jpeg: bytes) -> None:
        self.count, self.jpeg, self.caps = count, jpeg, []

    def members(self):
        for k in range(self.count):
            yield Member(f"{k}.jpg", 1, None, MemberType.FILE, False, read=self._read)

    def _read(self, cap: int) -> bytes:
        self.caps.append(cap)
        return (self.jpeg * (cap // len(self.jpeg) + 2))[: cap + 1]


def test_a_member_that_reads_past_its_declared_size_stops_at_the_per_member_cap(jpegs):
    archive: Archive = _Lying(1, jpegs[0])
    with pytest.raises(UnreadableImage) as caught:
        read_archive(archive, ArchiveLimits(max_member_bytes=50_000))
    assert caught.value.code == "archive_member_over_limit"
    assert archive.caps == [50_000]


def test_members_sharing_one_stream_stop_at_what_is_left_of_the_total(jpegs):
    limit = ArchiveLimits(max_member_bytes=40_000, max_total_bytes=100_000)
    archive = _Lying(5, jpegs[0])

    def honest(cap: int) -> bytes:  # each member reads 35,000 bytes, whatever its header said
        archive.caps.append(cap)
        return b"\0" * min(35_000, cap + 1)

    archive._read = honest
    with pytest.raises(UnreadableImage) as caught:
        read_archive(archive, limit)
    assert caught.value.code == "archive_too_large"
    assert archive.caps == [40_000, 40_000, 30_000]  # never more than the total in memory


@pytest.mark.parametrize("fmt", ["RAR 4", "RAR 5", "7z", "tar.gz", "tar.xz"])
def test_damaged_archives_of_every_format_are_refused_with_a_reason_never_another_error(fmt, jpegs):
    import random

    build, name = FORMATS[fmt]
    good = build({"study/a.jpg": jpegs[0], "study/b.jpg": jpegs[1]})
    rng = random.Random(11)
    for _ in range(60):
        data = bytearray(good)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            read_any_archive(bytes(data), name)
        except UnreadableImage as exc:
            assert exc.code


XZ_DICTIONARY_PROBE = r"""
import io, lzma, resource, struct, sys, tarfile, zlib
from segmenter.ml.io.archive import read_any_archive
data = open(sys.argv[1], "rb").read()
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    for k in range(6):
        info = tarfile.TarInfo(f"s/{k}.jpg"); info.size = len(data); t.addfile(info, io.BytesIO(data))
xz = bytearray(lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]))
size = (xz[12] + 1) * 4  # the block header, after the 12-byte stream header
header = xz[12 : 12 + size]
k = header.index(b"\x21\x01")  # LZMA2, one byte of properties: the dictionary size code
header[k + 2] = 39  # about 3 GiB
header[-4:] = struct.pack("<I", zlib.crc32(bytes(header[:-4])))
xz[12 : 12 + size] = header
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
slices = read_any_archive(bytes(xz), "s.tar.xz")
print(len(slices), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_an_xz_stream_that_declares_a_3_gib_dictionary_costs_only_what_it_decodes(data_root):
    """liblzma reserves the declared dictionary but only touches what the capped reads write."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", XZ_DICTIONARY_PROBE, str(data_root / "medseg-covid" / "images" / "1.jpg")],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )
    count, growth_mb = map(int, result.stdout.split()[-2:])
    assert count == 6
    assert growth_mb < 100
