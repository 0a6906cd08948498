"""No real chest CT slice is ever refused: every slice of ``../shared/data`` (all MedSeg and
Zenodo slices, apical and basal, the liver dome and the heart, lungs mostly consolidated
among them; every kmader slice sent as a W1500/L-600 PNG and as a Hounsfield-unit DICOM;
the sample DICOMs) goes through both stages of the CT check as a single upload would
(the pixel rules, then the networks' lung rules with the served weights), and passes.

Slow (about 1,700 slices, three segmentations each): marked ``every_real_slice`` so that
CI runs it once, not on each database."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from segmenter.ml.io.ctcheck import check_ct, check_lungs
from segmenter.ml.io.dicomwrite import write_ct_dicom
from segmenter.ml.io.imaging import UnreadableImage, read_slice, window
from segmenter.ml.training.data import kmader_to_hu

pytestmark = [pytest.mark.slow, pytest.mark.every_real_slice]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, "PNG")
    return buf.getvalue()


def refusal(served, ct) -> str | None:
    try:
        check_ct(ct)
        check_lungs([ct], served, study=False)
    except UnreadableImage as exc:
        return str(exc)
    return None


def test_every_real_jpeg_slice_is_accepted(served, data_root):
    paths = sorted((data_root / "medseg-covid" / "images").glob("*.jpg"))
    paths += sorted((data_root / "zenodo-covid-unlabelled" / "images").glob("*.jpg"))
    refused = [(p.name, r) for p in paths if (r := refusal(served, read_slice(p)))]
    assert len(paths) == 57 + 1231
    assert refused == []


def test_every_kmader_slice_is_accepted_as_png_and_as_dicom_and_the_sample_dicoms_too(served, data_root, tmp_path):
    values = np.load(data_root / "kmader-lungs" / "images.npz")["images"]
    refused = []
    for k, v in enumerate(values):
        hu = kmader_to_hu(v)
        for ct in (read_slice(png(window(hu, 1500, -600)), f"{k}.png"),
                   read_slice(write_ct_dicom(hu, tmp_path / f"{k}.dcm"))):
            if r := refusal(served, ct):
                refused.append((k, ct.name, r))
    samples = sorted((data_root / "dicom-samples").glob("*.dcm"))
    refused += [(p.name, r) for p in samples if (r := refusal(served, read_slice(p)))]
    assert len(values) == 200 and len(samples) == 2
    assert refused == []
