import io
import zipfile

import numpy as np
import pydicom
import pytest

from segmenter.ml.io.archive import ArchiveLimits, natural_key, read_zip
from segmenter.ml.io.imaging import UnreadableImage
from tests.conftest import zip_bytes

from .conftest import png


def _slice(value: int) -> bytes:
    return png(np.full((32, 32), value, np.uint8))


def test_it_reads_slices_from_sub_folders_in_natural_order():
    data = zip_bytes({"study/s10.png": _slice(10), "study/s2.png": _slice(2), "study/sub/s1.png": _slice(1)})
    slices = read_zip(data)
    assert [s.name for s in slices] == ["study/s2.png", "study/s10.png", "study/sub/s1.png"]
    assert [int(s.pixels[0, 0]) for s in slices] == [2, 10, 1]


def test_it_skips_macos_metadata_hidden_files_dicomdir_and_other_files():
    data = zip_bytes(
        {
            "__MACOSX/study/._a.png": b"junk",
            "study/.DS_Store": b"junk",
            ".hidden/a.png": _slice(5),
            "DICOMDIR": b"x" * 200,
            "notes.txt": b"hello",
            "study/a.png": _slice(7),
        }
    )
    slices = read_zip(data)
    assert [s.name for s in slices] == ["study/a.png"]


def test_dicom_slices_are_ordered_by_position_then_instance_number(dicom_path):
    members = {}
    for k, z in enumerate([30.0, 10.0, 20.0]):
        ds = pydicom.dcmread(dicom_path)
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.InstanceNumber = k + 1
        buf = io.BytesIO()
        ds.save_as(buf)
        members[f"IM{k}"] = buf.getvalue()  # DICOM files often have no extension
    slices = read_zip(zip_bytes(members))
    assert [s.position_mm for s in slices] == [30.0, 20.0, 10.0]  # head to feet
    assert all(s.slice_thickness_mm == 10.0 for s in slices)  # from the positions, not the tag


def test_natural_key_orders_numbers_by_value():
    assert sorted(["a10", "a2", "A1"], key=natural_key) == ["A1", "a2", "a10"]


@pytest.mark.parametrize("name", ["../../x.png", "/etc/x.png", "a/../../x.png", "C:/x.png", "..\\x.png"])
def test_it_refuses_paths_that_leave_the_archive(name):
    with pytest.raises(UnreadableImage, match="unsafe path"):
        read_zip(zip_bytes({name: _slice(1)}))


def test_it_refuses_encrypted_members():
    data = bytearray(zip_bytes({"a.png": _slice(1)}))
    # set the "encrypted" flag bit in the local and the central directory headers
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        at = data.find(sig)
        flag_at = at + (6 if sig == b"PK\x03\x04" else 8)
        data[flag_at] |= 0x1
    with pytest.raises(UnreadableImage, match="encrypted"):
        read_zip(bytes(data))


def test_it_refuses_too_many_members_before_unpacking():
    data = zip_bytes({f"{k}.png": b"x" for k in range(6)})
    with pytest.raises(UnreadableImage, match="6 files"):
        read_zip(data, ArchiveLimits(max_members=5))


def test_it_refuses_a_zip_bomb_from_its_directory():
    data = zip_bytes({"a.png": b"\0" * (5 * 1024 * 1024)})
    with pytest.raises(UnreadableImage, match="suspiciously|limit"):
        read_zip(data)
    with pytest.raises(UnreadableImage, match="limit"):
        read_zip(data, ArchiveLimits(max_total_bytes=1024 * 1024))


def test_it_refuses_a_member_over_the_size_limit():
    data = zip_bytes({"a.png": _slice(1) + b"\0" * 5000}, compression=zipfile.ZIP_STORED)
    with pytest.raises(UnreadableImage, match="limit"):
        read_zip(data, ArchiveLimits(max_member_bytes=4000))


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04broken", b"not a zip at all"])
def test_it_refuses_broken_archives(data):
    with pytest.raises(UnreadableImage, match="not a valid zip"):
        read_zip(data)


def test_it_refuses_a_zip_without_slices():
    with pytest.raises(UnreadableImage, match="no PNG, JPEG or DICOM"):
        read_zip(zip_bytes({"readme.txt": b"hello", "__MACOSX/a.png": _slice(1)}))


def test_a_damaged_slice_names_itself():
    with pytest.raises(UnreadableImage, match="study/bad.png"):
        read_zip(zip_bytes({"study/good.png": _slice(1), "study/bad.png": _slice(1)[:60]}))


def test_a_folder_reads_like_azip_bytes(tmp_path):
    from segmenter.ml.io.archive import read_folder

    (tmp_path / "sub").mkdir()
    (tmp_path / "s10.png").write_bytes(_slice(10))
    (tmp_path / "sub" / "s1.png").write_bytes(_slice(1))
    (tmp_path / ".hidden.png").write_bytes(_slice(3))
    (tmp_path / "notes.txt").write_text("x")
    assert [s.name for s in read_folder(tmp_path)] == ["s10.png", "sub/s1.png"]
    with pytest.raises(UnreadableImage, match="no PNG"):
        read_folder(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_control_and_bidi_characters_in_member_names_are_replaced(samples):
    from segmenter.ml.io.archive import read_zip

    from ..conftest import zip_bytes

    names = ["a\r\nb.dcm", "evil\u202egnp.dcm"]
    slices = read_zip(zip_bytes({names[0]: samples.dicom(0), names[1]: samples.dicom(1)}))
    assert sorted(s.name for s in slices) == ["a__b.dcm", "evil_gnp.dcm"]
