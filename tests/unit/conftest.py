"""Fixtures for the engine's unit tests: real data from ../shared/data, built inputs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def dicom_path(data_root) -> Path:
    return data_root / "dicom-samples" / "0.dcm"


@pytest.fixture(scope="session")
def dicom_hu(dicom_path) -> np.ndarray:
    """Hounsfield units of the real DICOM sample, float32 (512, 512)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(dicom_path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The shipped weights (or the folder SEGMENTER_WEIGHTS_DIR names)."""
    from segmenter.ml.model.weights import DEFAULT_WEIGHTS_DIR

    return Path(os.environ.get("SEGMENTER_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)


@pytest.fixture(scope="session")
def served(weights_dir):
    from segmenter.ml.model.ensemble import Ensemble

    return Ensemble.load(weights_dir)
