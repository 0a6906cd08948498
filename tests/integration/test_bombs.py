"""Small uploads that declare huge images are refused through the API at once, from their
headers, with a 4xx that says which limit: nothing is decoded and nothing is stored."""

from __future__ import annotations

import gzip
import io
import struct
import time
import zipfile

import numpy as np
import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.uid import JPEG2000Lossless

from segmenter.models import Analysis
from tests.conftest import zip_bytes
from tests.unit.conftest import png
from tests.unit.test_volumes import declaring

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine", "media_root")]


@pytest.fixture
def post(client, django_capture_on_commit_callbacks):
    def send(name: str, data: bytes):
        start = time.perf_counter()
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/api/v1/analyses", {"file": SimpleUploadedFile(name, data)})
        return response, time.perf_counter() - start

    return send


def _j2k_bomb(samples) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(samples.dicom(0)))
    ds.compress(JPEG2000Lossless)
    out = io.BytesIO()
    ds.save_as(out)
    data = out.getvalue()
    k = data.index(b"\xff\x4f\xff\x51")
    return data[: k + 8] + struct.pack(">II", 40000, 40000) + data[k + 16 :]


def _bombs(samples) -> dict[str, tuple[bytes, str]]:
    stored_png = png(np.zeros((4096, 4096), np.uint8))
    return {
        "j2k.dcm": (_j2k_bomb(samples), "declares 40,000×40,000 pixels"),
        # Each slice is checked as soon as it is decoded: the first blank one ends it
        # (test_budgets: slices that pass the check stop at the decoding budget).
        "stored.zip": (zip_bytes({f"s{k:02}.png": stored_png for k in range(60)}, zipfile.ZIP_STORED),
                       "s00.png: this does not look like a CT slice"),
        "under-2gib.nii.gz": (gzip.compress(declaring((1024, 1024, 1000), body=8 * 1024 * 1024)), "slices"),
        "needle.nii.gz": (gzip.compress(declaring((1, 1, 20000))), "each side must be at least 16"),
        "long.nii.gz": (gzip.compress(declaring((512, 512, 1500))), "1500 slices; the limit is 1000"),
    }


@pytest.mark.parametrize("name", ["j2k.dcm", "stored.zip", "under-2gib.nii.gz", "needle.nii.gz", "long.nii.gz"])
def test_a_small_file_that_declares_a_huge_image_is_refused_at_once(post, samples, name):
    data, says = _bombs(samples)[name]
    assert len(data) < 5 * 1024 * 1024
    response, seconds = post(name, data)
    assert response.status_code == 400, response.content
    assert says in response.json()["error"]
    assert seconds < 10
    assert not Analysis.objects.exists()
