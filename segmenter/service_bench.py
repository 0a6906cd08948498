"""Benchmark the service around the engine: `python -m segmenter.bench --json FILE`.

Runs against a throwaway SQLite database and media folder, with the real weights:

* served_ms: the engine's served path for one 512 x 512 DICOM slice (median of --runs);
* request_ms: the same slice uploaded through the web form, from POST to the rendered
  result page (Django's test client in this process; median of --runs), and
  request_overhead = request_ms / served_ms;
* zip_seconds: a --slices-slice zip of 512 x 512 DICOM slices through the web form,
  POST to result page, with the default immediate backend;
* cli_slices_per_s: the same zip through `manage.py segment`;
* api_worker_slices_per_s: the same zip through the API with the database queue and a
  `db_worker` process (timed from POST until the API reports it done, asking every
  POLL_SECONDS; the worker is started and warmed up first);
* web_peak_rss_mb: the peak resident memory of one gunicorn worker process that served
  one slice and the zip.

And for a whole CT study, a --volume-slices (300) 512 x 512 NIfTI volume in Hounsfield
units (the real lesion-free kmader slices, calibrated, repeated past 200):

* engine_volume_ms: the engine's own time per slice of that volume (mean over 20 of its
  slices, read as the service reads them), and engine_volume_slices_per_s;
* cli_volume_slices_per_s: the volume through `manage.py segment`, start to end;
* api_worker_volume_slices_per_s: the volume through the API with the database queue and
  a warm `db_worker`, from POST until the API reports it done, and
  api_worker_volume_ratio = that / engine_volume_slices_per_s (the goal: >= 0.8);
* worker_peak_rss_mb: the peak resident memory of a fresh `db_worker` process that loads
  the ensemble on one slice and then processes one upload: a 1-slice DICOM, the
  300-slice volume and a --large-slices (1,000) slice volume, and the same 300 and
  1,000 slices as a zip of single-slice CT DICOM files ("300 zip", "1000 zip");
  worker_peak_rss_spread_mb over all five.

Two real DICOM slices exist in the data set, so the zip repeats them; each copy is
segmented afresh.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from segmenter.ml.paths import DEFAULT_DATA_ROOT

ROOT = Path(__file__).resolve().parents[1]
#: How often the benchmark asks the API whether an upload is done: four times as often as
#: the progress page (views.PROGRESS_POLL_MS). The poller shares the cores with the
#: worker, so asking much more often slows what it measures; this costs at most 0.25 s.
POLL_SECONDS = 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 120.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            return
        except (requests.ConnectionError, requests.Timeout):  # not listening, or still loading the ensemble
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmHWM not found")


def _volume(path: Path, n: int, data_root: Path) -> Path:
    """Write an n-slice 512 x 512 int16 HU NIfTI volume (0.7 mm pixels, 1 mm slices) of the
    real kmader slices, calibrated as a scanner would (kmader_to_hu), to ``path``."""
    import nibabel as nib
    import numpy as np

    from segmenter.ml.training.data import kmader_to_hu

    values = np.load(data_root / "kmader-lungs" / "images.npz")["images"]
    hu = np.empty((512, 512, n), np.int16)  # (columns, rows, slices)
    for k in range(n):
        hu[:, :, k] = np.clip(kmader_to_hu(values[k % len(values)]), -1024, 3071).astype(np.int16).T
    image = nib.Nifti1Image(hu, np.diag([-0.7, -0.7, 1.0, 1.0]))
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


def _dicom_zip(path: Path, n: int, data_root: Path) -> Path:
    """Write the slices of ``_volume`` as a zip of n single-slice CT DICOM files (0.7 mm
    pixels, 1 mm apart, stored in no particular order) to ``path``."""
    import numpy as np

    from segmenter.ml.io.dicomwrite import write_ct_dicom
    from segmenter.ml.training.data import kmader_to_hu

    values = np.load(data_root / "kmader-lungs" / "images.npz")["images"]
    order = np.random.default_rng(0).permutation(n)
    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k in order:
            hu = np.clip(kmader_to_hu(values[k % len(values)]), -1024, 3071)
            written = write_ct_dicom(hu, Path(scratch) / "slice.dcm", (0.7, 0.7), int(k) + 1,
                                     attributes={"ImagePositionPatient": [0.0, 0.0, -float(k)]})
            zf.write(written, f"series/IM{k:04d}")
    return path


def _start_worker(work: Path, log_name: str) -> subprocess.Popen:
    worker_env = {**os.environ, "DJANGO_TASKS_BACKEND": "django_tasks_db.DatabaseBackend", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "db_worker", "--no-reload", "--interval", "0.1", "--no-startup-delay"],
        env=worker_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / log_name, "w"),  # noqa: SIM115
    )


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segmenter.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--volume-slices", type=int, default=300)
    parser.add_argument("--large-slices", type=int, default=1000)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="42epochs-bench-"))
    env = {
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "DJANGO_MEDIA_ROOT": str(work / "media"),
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "benchmark-only",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "DJANGO_LOG_LEVEL": "WARNING",
        "SEGMENTER_THREADS": str(args.threads),
        "DJANGO_SETTINGS_MODULE": "_42epochs.settings",
    }
    os.environ.update(env)
    import django

    django.setup()
    import requests
    from django.core.management import call_command
    from django.test import Client, override_settings

    from segmenter.engine import get_segmenter
    from segmenter.ml.evaluation.engine_bench import median_ms, report
    from segmenter.ml.io.imaging import read_slice
    from segmenter.models import Analysis

    call_command("migrate", "--noinput", verbosity=0)
    dicoms = [args.data_root / "dicom-samples" / f"{k}.dcm" for k in (0, 1)]
    zip_buf = io.BytesIO()
    with zipfile.ZipFile(zip_buf, "w") as zf:
        for k in range(args.slices):
            zf.writestr(f"study/slice_{k:03d}.dcm", dicoms[k % 2].read_bytes())
    zip_bytes = zip_buf.getvalue()
    (work / "study.zip").write_bytes(zip_bytes)
    results: dict = {"slices": args.slices, "threads": args.threads}

    # 1. the engine alone
    segmenter = get_segmenter()
    pixels = read_slice(dicoms[0]).pixels
    results["served_ms"] = median_ms(lambda: segmenter.segment(pixels), args.runs)

    # 2. one slice through the web form, to the rendered result page
    client = Client()
    data = dicoms[0].read_bytes()

    def one_request():
        from django.core.files.uploadedfile import SimpleUploadedFile

        response = client.post("/", {"file": SimpleUploadedFile("chest.dcm", data)}, follow=True)
        if response.status_code != 200 or b"CT-" not in response.content:
            raise RuntimeError(f"upload failed: {response.status_code}")

    results["request_ms"] = median_ms(one_request, args.runs, warmup=2)
    results["request_overhead"] = results["request_ms"] / results["served_ms"]

    # 3. the zip through the web form
    from django.core.files.uploadedfile import SimpleUploadedFile

    t = time.perf_counter()
    response = client.post("/", {"file": SimpleUploadedFile("study.zip", zip_bytes)}, follow=True)
    results["zip_seconds"] = time.perf_counter() - t
    if response.status_code != 200 or Analysis.objects.filter(kind="study", status="done").count() != 1:
        raise RuntimeError("the zip study failed")

    # 4. the command line
    t = time.perf_counter()
    call_command("segment", str(work / "study.zip"), "--out", str(work / "cli"), "--no-progress", stdout=io.StringIO(), stderr=io.StringIO())
    results["cli_slices_per_s"] = args.slices / (time.perf_counter() - t)

    # 5. the API with the database queue and a worker process: the zip, then the volume
    volume = _volume(work / "volume.nii.gz", args.volume_slices, args.data_root).read_bytes()
    large = _volume(work / "large.nii.gz", args.large_slices, args.data_root).read_bytes()
    series = _dicom_zip(work / "series.zip", args.volume_slices, args.data_root).read_bytes()
    large_series = _dicom_zip(work / "large-series.zip", args.large_slices, args.data_root).read_bytes()
    from segmenter.ml.io.volumes import read_nifti

    sample = read_nifti(volume, "volume.nii.gz")[:: max(1, args.volume_slices // 20)][:20]
    t = time.perf_counter()
    for ct in sample:
        segmenter.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm)
    results["engine_volume_ms"] = 1000 * (time.perf_counter() - t) / len(sample)
    results["engine_volume_slices_per_s"] = 1000 / results["engine_volume_ms"]
    del sample

    def through_api(name: str, payload: bytes) -> float:
        t0 = time.perf_counter()
        r = client.post("/api/v1/analyses", {"file": SimpleUploadedFile(name, payload)})
        if r.status_code != 202:
            raise RuntimeError(f"API answered {r.status_code}: {r.content[:200]}")
        url = r.json()["links"]["self"]
        while True:
            body = client.get(url).json()
            if body["status"] in ("done", "failed"):
                if body["status"] == "failed":
                    raise RuntimeError(body["error"])
                return time.perf_counter() - t0
            time.sleep(POLL_SECONDS)

    with override_settings(TASKS={"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}):
        worker = _start_worker(work, "worker.log")
        try:
            through_api("warmup.dcm", data)  # the worker loads the ensemble on its first task
            results["api_worker_slices_per_s"] = args.slices / through_api("study.zip", zip_bytes)
            results["api_worker_volume_slices_per_s"] = args.volume_slices / through_api("volume.nii.gz", volume)
            results["api_worker_volume_ratio"] = (
                results["api_worker_volume_slices_per_s"] / results["engine_volume_slices_per_s"]
            )
        finally:
            _stop(worker)
        rss = {}
        for label, name, payload in (
            ("1", "chest.dcm", data),
            (str(args.volume_slices), "volume.nii.gz", volume),
            (str(args.large_slices), "large.nii.gz", large),
            (f"{args.volume_slices} zip", "series.zip", series),
            (f"{args.large_slices} zip", "large-series.zip", large_series),
        ):
            worker = _start_worker(work, f"worker-{label}.log")
            try:
                through_api("warmup.dcm", data)
                through_api(name, payload)
                rss[label] = _peak_rss_mb(worker.pid)
            finally:
                _stop(worker)
        results["worker_peak_rss_mb"] = rss
        results["worker_peak_rss_spread_mb"] = max(rss.values()) - min(rss.values())

    # 4b. the volume through the command line
    t = time.perf_counter()
    call_command("segment", str(work / "volume.nii.gz"), "--out", str(work / "cli-volume"), "--no-progress",
                 stdout=io.StringIO(), stderr=io.StringIO())
    results["cli_volume_slices_per_s"] = args.volume_slices / (time.perf_counter() - t)

    # 6. peak memory of one gunicorn worker serving a slice and the zip
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:_42epochs.gunicorn"],
        env={**os.environ, "WEB_CONCURRENCY": "1", "PORT": str(port), "PYTHONPATH": str(ROOT)},
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "gunicorn.log", "w"),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/api/v1/openapi.json")
        for name, payload in (("chest.dcm", data), ("study.zip", zip_bytes)):
            r = requests.post(f"{base}/api/v1/analyses", files={"file": (name, payload)}, timeout=600)
            if r.status_code != 201:
                raise RuntimeError(f"gunicorn answered {r.status_code}")
        (worker_pid,) = _children(server.pid)
        results["web_peak_rss_mb"] = _peak_rss_mb(worker_pid)
    finally:
        server.terminate()
        server.wait(30)

    report(results, args.json)


if __name__ == "__main__":
    main()
