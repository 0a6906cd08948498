"""Every refusal of a file names its reason with a stable code, beside its English message."""

import gzip
import pickle
import struct
import zlib

import numpy as np
import pytest

from segmenter.ml.io.archive import read_zip
from segmenter.ml.io.imaging import UnreadableImage, read_slices
from segmenter.ml.io.volumes import read_nifti
from tests.conftest import zip_bytes

from .conftest import png
from .test_volumes import declaring


def _slice() -> bytes:
    return png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def _encrypted(archive: bytes) -> bytes:
    data = bytearray(archive)
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.find(signature) + flags_at] |= 0x1
    return bytes(data)


BAD_INPUTS = {
    "empty": (lambda: read_slices(b"", "a.png"), "empty", {}),
    "not an image": (lambda: read_slices(b"this is not a picture\n" * 20, "a.png"), "unsupported_type", {}),
    "truncated png": (lambda: read_slices(_slice()[:200], "a.png"), "damaged_image", {}),
    "decompression bomb": (lambda: read_slices(_png_claiming(40000, 40000), "a.png"), "decompression_bomb", {}),
    "huge png": (
        lambda: read_slices(_png_claiming(5000, 5000), "a.png"),
        "image_too_large",
        {"width": 5000, "height": 5000, "limit": 4096 * 4096},
    ),
    "unsafe zip path": (lambda: read_zip(zip_bytes({"../../x.png": _slice()})), "unsafe_path", {"path": "../../x.png"}),
    "encrypted zip": (lambda: read_zip(_encrypted(zip_bytes({"a.png": _slice()}))), "archive_encrypted", {"kind": "zip"}),
    "zip bomb": (lambda: read_zip(zip_bytes({"a.png": b"\0" * (5 * 1024 * 1024)})), "archive_bomb", {"member": "a.png"}),
    "zip with no slices": (lambda: read_zip(zip_bytes({"readme.txt": b"hello"})), "archive_without_slices", {"kind": "zip"}),
    "broken zip": (lambda: read_zip(b"PK\x03\x04broken"), "not_an_archive", {"kind": "zip"}),
    "not nifti": (lambda: read_nifti(b"\0" * 500, "x.nii"), "not_nifti", {}),
    "gzip bomb": (
        lambda: read_nifti(gzip.compress(declaring((64, 64, 512), body=3 * 1024 * 1024)), "x.nii.gz", max_bytes=1024 * 1024),
        "volume_too_large",
        {"limit_bytes": 1024 * 1024},
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=list(BAD_INPUTS))
def test_every_refusal_carries_a_code_and_its_params(case):
    read, code, params = case
    with pytest.raises(UnreadableImage) as caught:
        read()
    assert caught.value.code == code
    assert caught.value.params.items() >= params.items()


def test_the_message_stays_the_english_one():
    with pytest.raises(UnreadableImage) as caught:
        read_zip(zip_bytes({"../x.png": _slice()}))
    assert str(caught.value) == "the zip contains an unsafe path ('../x.png')"


def test_an_unreadable_file_in_a_zip_keeps_its_own_refusal():
    with pytest.raises(UnreadableImage) as caught:
        read_zip(zip_bytes({"study/good.png": _slice(), "study/bad.png": _slice()[:200]}))
    exc = caught.value
    assert exc.code == "unreadable_member"
    assert exc.params["member"] == "study/bad.png"
    assert exc.params["reason"].code == "damaged_image"
    assert str(exc).startswith("study/bad.png: the image file is damaged or incomplete")


def test_a_refusal_survives_pickling_with_its_code():
    exc = pickle.loads(pickle.dumps(UnreadableImage("x", code="empty", params={"n": 1})))
    assert (str(exc), exc.code, exc.params) == ("x", "empty", {"n": 1})


def test_code_and_params_are_optional():
    exc = UnreadableImage("something else")
    assert (exc.code, exc.params) == (None, {})
