"""Fixtures shared by every test: a throwaway MEDIA_ROOT, the stand-in engine, real inputs.

* Every test runs on the stand-in engine (tests/stubs.py) unless it is marked
  ``real_engine``: a test that forgets to choose never loads the trained networks.
* Real inputs are built from the real data set (``../shared/data`` beside the repository,
  or the folder named by ``SEGMENTER_DATA_ROOT``), reached only through the ``data_root``
  fixture; nothing is copied into the repository. When the folder is missing, every test
  that needs it FAILS, so that a run cannot shrink unnoticed; ``SEGMENTER_ALLOW_NO_DATA=1``
  makes them skip instead, each with the reason.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from segmenter import engine
from segmenter.ml.paths import DEFAULT_DATA_ROOT
from tests import stubs

DATA_ROOT = DEFAULT_DATA_ROOT


#: The tests' own secret key: outside debug the settings have none (see _42epochs/settings.py).
TEST_SECRET_KEY = "tests-only-secret-key-never-used-outside-pytest"


def pytest_configure(config) -> None:
    """The tests sign (CSRF tokens, sessions) with their own key unless one is given."""
    from django.conf import settings

    if not os.environ.get("DJANGO_SECRET_KEY"):
        settings.SECRET_KEY = TEST_SECRET_KEY


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    """Each test stores its files in its own folder, removed with tmp_path."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


@pytest.fixture(autouse=True)
def upload_temp_dir(settings, tmp_path) -> Path:
    """Spooled uploads go to a folder of the test's own, which is all the reaper sweeps."""
    folder = tmp_path / "upload-tmp"
    folder.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(folder)
    return folder


@pytest.fixture
def stored_files(media_root):
    """A function listing every file under MEDIA_ROOT, as paths relative to it."""

    def files() -> list[str]:
        return sorted(str(p.relative_to(media_root)) for p in media_root.rglob("*") if p.is_file())

    return files


@pytest.fixture
def use_engine(settings):
    """A function that installs a stand-in engine class through SEGMENTER_ENGINE."""

    def install(cls: type) -> None:
        settings.SEGMENTER_ENGINE = stubs.dotted_path(cls)
        engine.reset()

    yield install
    engine.reset()


@pytest.fixture
def stand_in_engine(use_engine):
    """The deterministic stand-in (tests/stubs.py) instead of the trained ensemble."""
    use_engine(stubs.StandInSegmenter)


@pytest.fixture
def segment_calls(monkeypatch) -> list:
    """A list that grows by one with each slice the stand-in engine segments (its CT
    check's runs included, as the ensemble's are network runs too)."""
    calls = []
    segment = stubs.StandInSegmenter.segment
    monkeypatch.setattr(stubs.StandInSegmenter, "segment", lambda self, *a, **k: calls.append(1) or segment(self, *a, **k))
    return calls


@pytest.fixture(autouse=True)
def _stand_in_unless_real_engine(request):
    """Every test gets the stand-in engine unless it is marked ``real_engine``: a test that
    forgets to ask for one never loads the trained networks by accident."""
    if request.node.get_closest_marker("real_engine") is None:
        request.getfixturevalue("stand_in_engine")


# --- Real inputs -----------------------------------------------------------------------


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive in memory holding ``members`` (name -> content)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


class Samples:
    """Test inputs built in memory from the real data set."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dicom(self, k: int = 0) -> bytes:
        """A 512 x 512 chest CT slice with Hounsfield units (dicom-samples/k.dcm)."""
        return (self.root / "dicom-samples" / f"{k}.dcm").read_bytes()

    def jpeg(self, n: int = 0) -> bytes:
        """An 8-bit grey, lung-windowed, cropped CT slice (medseg-covid/images/n.jpg)."""
        return (self.root / "medseg-covid" / "images" / f"{n}.jpg").read_bytes()

    def grey(self, n: int = 0) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.jpeg(n))).convert("L"))

    def png(self, n: int = 0) -> bytes:
        """The same slice as an 8-bit grey PNG."""
        return _png(Image.fromarray(self.grey(n)))

    def rgb_png(self, n: int = 0) -> bytes:
        """The same slice as an RGB PNG (grey values in every channel)."""
        return _png(Image.fromarray(self.grey(n)).convert("RGB"))

    def png16(self, k: int = 0) -> bytes:
        """The DICOM slice as a 16-bit grey PNG of uncalibrated CT numbers (HU + 2048)."""
        import pydicom
        from pydicom.pixels import apply_modality_lut

        ds = pydicom.dcmread(io.BytesIO(self.dicom(k)))
        hu = apply_modality_lut(ds.pixel_array, ds)
        values = np.clip(hu + 2048, 0, 65535).astype(np.uint16)
        image = Image.fromarray(values)
        assert image.mode.startswith("I;16"), image.mode
        return _png(image)

    def multiframe_dicom(self, tmp_path: Path) -> bytes:
        """A two-frame CT DICOM (Hounsfield units) of dicom-samples 0 and 1."""
        import pydicom
        from pydicom.pixels import apply_modality_lut

        from segmenter.ml.io.dicomwrite import write_ct_dicom

        frames = []
        for k in (0, 1):
            ds = pydicom.dcmread(io.BytesIO(self.dicom(k)))
            frames.append(apply_modality_lut(ds.pixel_array, ds))
        return write_ct_dicom(np.stack(frames), tmp_path / "multiframe.dcm", (0.625, 0.625)).read_bytes()

    zip = staticmethod(zip_bytes)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


#: Set to 1 to skip, not fail, the tests that need the real data set when it is missing.
ALLOW_NO_DATA = "SEGMENTER_ALLOW_NO_DATA"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real CT data set; see the module docstring for what happens when it is missing."""
    if not (DATA_ROOT / "dicom-samples" / "0.dcm").is_file():
        reason = f"the real CT data set is not at {DATA_ROOT} (set SEGMENTER_DATA_ROOT)"
        if os.environ.get(ALLOW_NO_DATA) == "1":
            pytest.skip(f"{reason}; skipped because {ALLOW_NO_DATA}=1")
        pytest.fail(f"{reason}, or set {ALLOW_NO_DATA}=1 to skip the tests that need it", pytrace=False)
    return DATA_ROOT


@pytest.fixture(scope="session")
def samples(data_root) -> Samples:
    return Samples(data_root)


# --- Requests --------------------------------------------------------------------------


@pytest.fixture
def upload(client, django_capture_on_commit_callbacks):
    """A function that posts one file to the upload form and returns the response.

    Processing is queued on transaction commit; inside a test's transaction the queued
    callbacks run when the request is done, as they would after a real commit.
    """

    def send(name: str, data: bytes, *, xhr: bool = False, **extra):
        headers = {"Accept": "application/json", "X-Requested-With": "XMLHttpRequest"} if xhr else {}
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                reverse("segmenter:home"), {"file": SimpleUploadedFile(name, data)}, headers=headers, **extra
            )
        return response

    return send


@pytest.fixture
def analyse(upload):
    """A function that uploads one file and returns its Analysis (processed by then)."""
    from segmenter.models import Analysis

    def run(name: str, data: bytes) -> Analysis:
        response = upload(name, data, xhr=True)
        assert response.status_code == 200, response.content
        analysis_id = response.json()["url"].strip("/").split("/")[1]  # a/<uuid>/...
        return Analysis.objects.get(pk=analysis_id)

    return run


# --- A real PACS ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A throwaway Orthanc (tests/pacs.py) for the whole session: loopback, its own ports and
    storage folder, basic auth, DICOMweb. Missing Orthanc fails the tests that need it
    (.ci/run installs Debian's orthanc and orthanc-dicomweb)."""
    from tests.pacs import Orthanc

    try:
        server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pacs(settings, orthanc):
    """The app configured for the test Orthanc (basic auth), which it returns."""
    from tests.pacs import PASSWORD, USER

    settings.SEGMENTER_DICOMWEB_URL = orthanc.root
    settings.SEGMENTER_DICOMWEB_USER, settings.SEGMENTER_DICOMWEB_PASSWORD = USER, PASSWORD
    settings.SEGMENTER_DICOMWEB_TOKEN = ""
    settings.SEGMENTER_DICOMWEB_TIMEOUT = 10
    settings.SEGMENTER_DICOMWEB_SEND_ALWAYS = False
    return orthanc
