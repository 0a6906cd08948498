"""A bounded, seeded mutation fuzz over real files: every mutant is read or refused with a
reason, never an internal error, by the readers and through the API.

Each mutant is one real file (DICOM, PNG, JPEG, a NIfTI and a zip built from real slices)
with a few bytes flipped, a span overwritten with random or boundary bytes (0x00, 0xFF:
the extremes of header fields), a span repeated, or the file cut short. The seed is fixed,
so a failure names a mutant that can be rebuilt.
"""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.pixels import apply_modality_lut

from segmenter.hostile import mutate
from segmenter.ml.io.archive import read_zip
from segmenter.ml.io.imaging import UnreadableImage, read_slices
from segmenter.ml.io.volumes import read_nifti

SEED = 20261202
READER_MUTANTS = 400  # per file, straight to the readers
API_MUTANTS = 30  # per file, through the whole API


def _nifti(samples) -> bytes:
    hu = []
    for k in (0, 1):
        ds = pydicom.dcmread(io.BytesIO(samples.dicom(k)))
        hu.append(apply_modality_lut(ds.pixel_array, ds).astype(np.int16)[::4, ::4])
    image = nib.Nifti1Image(np.stack(hu, axis=-1), np.diag([2.5, 2.5, 1.25, 1.0]))
    return gzip.compress(image.to_bytes())


@pytest.fixture(scope="module")
def originals(data_root):
    from tests.conftest import Samples

    samples = Samples(data_root)
    return {
        "slice.dcm": samples.dicom(0),
        "slice.png": samples.png(1),
        "slice.jpg": samples.jpeg(2),
        "volume.nii.gz": _nifti(samples),
        "study.zip": samples.zip({"s/1.dcm": samples.dicom(0), "s/2.jpg": samples.jpeg(3)}),
    }


def _read(name: str, data: bytes) -> None:
    if name.endswith(".zip"):
        read_zip(data)
    elif name.endswith(".nii.gz"):
        read_nifti(data, name)
    else:
        read_slices(data, name)


@pytest.mark.parametrize("name", ["slice.dcm", "slice.png", "slice.jpg", "volume.nii.gz", "study.zip"])
def test_every_mutant_is_read_or_refused_with_a_reason(originals, name):
    rng = np.random.default_rng([SEED, len(name)])
    refused = 0
    for k in range(READER_MUTANTS):
        mutant = mutate(originals[name], rng)
        try:
            _read(name, mutant)
        except UnreadableImage:
            refused += 1
        except Exception as exc:  # pragma: no cover - the failure this test looks for
            pytest.fail(f"mutant {k} of {name} raised {exc!r}")
    assert refused > 0  # the mutations do reach the parsers


@pytest.mark.django_db
@pytest.mark.usefixtures("stand_in_engine", "media_root")
def test_no_mutant_gets_a_server_error_from_the_api(client, originals, django_capture_on_commit_callbacks):
    rng = np.random.default_rng(SEED)
    statuses = []
    for name, data in originals.items():
        for k in range(API_MUTANTS):
            mutant = mutate(data, rng)
            with django_capture_on_commit_callbacks(execute=True):
                response = client.post("/api/v1/analyses", {"file": SimpleUploadedFile(name, mutant)})
            assert response.status_code < 500, (name, k, response.content[:300])
            assert response["Content-Type"].startswith("application/json"), (name, k)
            if response.status_code == 201:
                assert response.json()["status"] in ("done", "queued", "running"), (name, k, response.json())
            statuses.append(response.status_code)
    assert 400 in statuses and 201 in statuses


def test_the_hostile_corpus_of_the_probe_is_101_small_files(data_root):
    from segmenter.hostile import corpus

    files = corpus(data_root)
    assert len(files) == 88 + 13
    assert max(len(d) for name, d in files.items() if name != "ct-4096.png") < 5 * 1024 * 1024  # bombs are small
    assert {"j2k-40000.dcm", "stored-60x4096.zip", "under-2gib.nii.gz", "ct-4096.png"} <= set(files)


def test_the_corpus_ends_with_the_undecodable_dicom_headers(data_root):
    from segmenter.hostile import DICOM_HEADER_CASES, corpus

    names = [n for n in corpus(data_root) if n.startswith("dicom-header-")]
    assert len(names) == len(DICOM_HEADER_CASES) + 1
