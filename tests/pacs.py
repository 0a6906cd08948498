"""A real PACS for the tests: a throwaway Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``)
and real CT series to store in it.

``Orthanc`` starts the server on loopback, on free ports, with its own storage folder, basic
auth and the DicomWeb plugin (found with ``dpkg -L orthanc-dicomweb``); ``kmader_series``
writes real kmader slices, calibrated to Hounsfield units (training.data.kmader_to_hu), as
one CT series of single-frame instances as a scanner would. ``FaultyProxy`` stands between
the app and Orthanc to play a server that is slow, cuts a transfer half-way or fails a
store.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import requests
from pydicom.uid import generate_uid

USER, PASSWORD = "pacs-user", "pacs-secret-for-tests"
PLUGIN_FALLBACK = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dicomweb_plugin() -> str | None:
    """The DicomWeb plugin's .so, as the Debian package lists it."""
    try:
        listed = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        listed = ""
    found = [line for line in listed.splitlines() if "/plugins/" in line and line.endswith(".so")]
    if found:
        return found[0]
    return PLUGIN_FALLBACK if Path(PLUGIN_FALLBACK).exists() else None


class Orthanc:
    """A running Orthanc with its own folder; ``root`` is its DICOMweb root."""

    def __init__(self, folder: Path, *, aet: str = "TESTPACS", peers: dict | None = None) -> None:
        binary, plugin = shutil.which("Orthanc"), dicomweb_plugin()
        if binary is None or plugin is None:
            raise RuntimeError(
                "Orthanc is not installed: apt-get install orthanc orthanc-dicomweb (.ci/run does)"
            )
        self.folder = folder
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), aet
        storage = folder / "storage"
        storage.mkdir(parents=True)
        config = {
            "Name": "42-EPOCHS tests",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpBindAddress": "127.0.0.1",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": peers or {},
            "DicomCheckCalledAet": False,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [binary, str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.root = f"{self.http}/dicom-web"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{self.http}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not start: see {folder / 'orthanc.log'}")
            time.sleep(0.2)

    def store(self, files: list[bytes]) -> None:
        for data in files:
            requests.post(
                f"{self.http}/instances", data=data, auth=(USER, PASSWORD), timeout=30
            ).raise_for_status()

    def get(self, path: str):
        response = requests.get(f"{self.http}{path}", auth=(USER, PASSWORD), timeout=30)
        response.raise_for_status()
        return response

    def series_of_study(self, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
        """Modality -> the data sets of every instance of that modality in the study."""
        found = self.get_json("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        result: dict[str, list[pydicom.Dataset]] = {}
        for study in found:
            for series in self.get(f"/studies/{study}/series").json():
                for instance in series["Instances"]:
                    ds = pydicom.dcmread(io.BytesIO(self.get(f"/instances/{instance}/file").content))
                    result.setdefault(ds.Modality, []).append(ds)
        return result

    def get_json(self, path: str, body: dict):
        response = requests.post(f"{self.http}{path}", json=body, auth=(USER, PASSWORD), timeout=30)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@functools.cache
def _kmader_images(data_root: Path) -> np.ndarray:
    """The first KMADER_KEPT kmader slices (uncalibrated int16, (N, 512, 512)), read once."""
    with np.load(data_root / "kmader-lungs" / "images.npz") as archive:
        return archive["images"][:KMADER_KEPT].copy()


KMADER_KEPT = 40


def kmader_series(data_root: Path, count: int = 12, *, first: int = 0, modality: str = "CT") -> list[bytes]:
    """``count`` real kmader slices from ``first``, calibrated to HU, as one series of a new
    study (shared study, series and frame of reference UIDs; positions 5 mm apart; patient
    and study attributes as a PACS holds them). Part 10 bytes, in position order."""
    from segmenter.ml.io.dicomwrite import write_ct_dicom
    from segmenter.ml.training.data import kmader_to_hu

    images = _kmader_images(data_root)[first : first + count]
    shared = {
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "PatientName": "Test^Kmader",
        "PatientID": f"KM{first:04d}",
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "AccessionNumber": f"ACC{first:05d}",
        "StudyDate": "20260101",
        "StudyTime": "120000",
        "StudyID": "1",
        "ReferringPhysicianName": "",
        "SeriesNumber": 2,
        "SeriesDescription": "Lung 5 mm",
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SliceThickness": 5.0,
    }
    files = []
    for k, values in enumerate(images):
        attributes = dict(
            shared, ImagePositionPatient=[-250.0, -250.0, -5.0 * k], SOPInstanceUID=generate_uid()
        )
        with tempfile.TemporaryDirectory() as folder:
            path = write_ct_dicom(
                kmader_to_hu(values),
                Path(folder) / "slice.dcm",
                spacing_mm=(0.7, 0.7),
                instance=k + 1,
                attributes=attributes,
            )
            ds = pydicom.dcmread(path)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if modality != "CT":
            ds.Modality = modality
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
    return files


class FaultyProxy:
    """An HTTP proxy to ``upstream`` that misbehaves as told (``mode``): "slow" waits
    ``delay`` seconds before answering, "cut" sends half of a large answer and drops the
    connection, "fail-store" answers every POST with 503; "pass" forwards faithfully."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.mode, self.delay = upstream, "pass", 5.0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self, method: str) -> None:
                body = (
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    if method == "POST"
                    else None
                )
                if method == "POST" and proxy.mode == "fail-store":
                    self._answer(503, b"store refused by the test", "text/plain")
                    return
                if proxy.mode == "slow":
                    time.sleep(proxy.delay)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                answer = requests.request(
                    method, proxy.upstream + self.path, headers=headers, data=body, timeout=60
                )
                content = answer.content
                if proxy.mode == "cut" and len(content) > 100_000:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", answer.headers.get("Content-Type", ""))
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content[: len(content) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self._answer(answer.status_code, content, answer.headers.get("Content-Type", ""))

            def _answer(self, status: int, content: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def do_GET(self):  # noqa: N802
                self._forward("GET")

            def do_POST(self):  # noqa: N802
                self._forward("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def root(self, upstream_root: str) -> str:
        """The proxy's address for a path on the upstream server."""
        return f"http://127.0.0.1:{self.port}{upstream_root[len(self.upstream) :]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
