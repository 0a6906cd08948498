"""Send a corpus of hostile uploads to a running server and measure what they cost it:
``python -m segmenter.hostile --url http://127.0.0.1:8000 --pid PID [--data-root DIR]``.

The corpus is built in memory from the real slices of ``../shared/data``: small files that
declare huge images (a JPEG 2000 DICOM of 40000², a JPEG DICOM of 60000², a zip of 60
stored 4096² PNGs, gzipped NIfTI headers of up to 10^9 voxels, 1 x 1 x N volumes),
damaged files (seeded mutations of real DICOM, PNG, JPEG, NIfTI and zip files), names
meant to inject (spreadsheet formulas, control and bidi characters), and real DICOM slices
whose pixel headers pydicom cannot decode as declared (BitsAllocated 1, 12 or 64, more bits
stored than allocated, a CT with 3 samples per pixel, a palette, ...: each must get a 400). Each is posted to the
API; the report gives, per file, the status, whether the answer was JSON, the seconds,
and the server's resident memory after it (``VmRSS`` of ``--pid``) and at its peak
(``VmHWM``), and checks the issue's bounds: every answer a 2xx/4xx JSON within 60 s, no
file raising the server's memory by over 1 GB, the server never past 2.5 GB, no CSV cell
that starts a formula, no control or bidi character in a slice name. A benchmark, not a
test: run it against ``make run`` on an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import logging
import struct
import sys
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path

import numpy as np

from segmenter.ml.paths import DEFAULT_DATA_ROOT

MB = 1024 * 1024
log = logging.getLogger("segmenter.hostile")


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One seeded mutation of ``data``; mutations hit the first 4 KB (the headers) half the time."""
    b = bytearray(data)
    n = len(b)
    reach = min(n, 4096) if rng.random() < 0.5 else n
    kind = rng.integers(5)
    at = int(rng.integers(reach))
    if kind == 0:  # flip a few bytes
        for k in rng.integers(reach, size=int(rng.integers(1, 9))):
            b[int(k)] ^= int(rng.integers(1, 256))
    elif kind == 1:  # overwrite a span with random bytes
        span = int(rng.integers(1, 64))
        b[at : at + span] = rng.integers(0, 256, size=len(b[at : at + span]), dtype=np.uint8).tobytes()
    elif kind == 2:  # a header field at its extreme
        b[at : at + 4] = bytes([0xFF if rng.random() < 0.5 else 0x00]) * len(b[at : at + 4])
    elif kind == 3:  # a span repeated
        span = int(rng.integers(1, 256))
        b[at:at] = b[at : at + span]
    else:  # cut short
        del b[max(1, at) :]
    return bytes(b)


def _rss_kb(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _nifti_header(shape, dtype=np.int16, body: int = 0) -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([0.7, 0.7, 1.0, 1.0]), code=1)
    header.set_data_offset(352)
    return header.binaryblock + b"\0" * 4 + b"\0" * body


#: DICOM headers pydicom cannot decode, or would decode into something other than the
#: image they declare: element -> value set on a real CT slice. Each must be refused
#: with a 400 and a reason before anything is stored (headers.check_dicom_pixel_module).
DICOM_HEADER_CASES: dict[str, dict] = {
    "bits-allocated-1": {"BitsAllocated": 1, "BitsStored": 1, "HighBit": 0},
    "bits-allocated-12": {"BitsAllocated": 12},
    "bits-allocated-64": {"BitsAllocated": 64},
    "bits-stored-over-allocated": {"BitsStored": 20},
    "bits-stored-0": {"BitsStored": 0},
    "ct-with-3-samples": {"SamplesPerPixel": 3},
    "rgb-without-planar": {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"},
    "pixel-representation-2": {"PixelRepresentation": 2},
    "palette-colour": {"PhotometricInterpretation": "PALETTE COLOR"},
    "ybr-with-1-sample": {"PhotometricInterpretation": "YBR_FULL"},
    "bits-allocated-8-of-16-bit-data": {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
    "bits-allocated-32-of-16-bit-data": {"BitsAllocated": 32, "BitsStored": 32, "HighBit": 31},
}


def dicom_header_cases(dicom: bytes) -> dict[str, bytes]:
    """name -> a real DICOM slice with one of DICOM_HEADER_CASES' headers, and the first
    of them inside a zip (a study's files are checked from their headers first)."""
    import pydicom

    files = {}
    for case, values in DICOM_HEADER_CASES.items():
        ds = pydicom.dcmread(io.BytesIO(dicom))
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out)
        files[f"dicom-header-{case}.dcm"] = out.getvalue()
    good = {f"s/{k}.dcm": dicom for k in range(2)}
    files["dicom-header-bits-allocated-1-in-a-study.zip"] = _zip(
        {**good, "s/2.dcm": files["dicom-header-bits-allocated-1.dcm"]}
    )
    return files


def corpus(root: Path) -> dict[str, bytes]:
    """name -> bytes of every hostile upload: 88 bombs, mutants and names, then the
    DICOM headers of dicom_header_cases (each must be answered 400)."""
    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    dicom = (root / "dicom-samples" / "0.dcm").read_bytes()
    jpeg = (root / "medseg-covid" / "images" / "1.jpg").read_bytes()
    files: dict[str, bytes] = {}

    ds = pydicom.dcmread(io.BytesIO(dicom))
    ds.compress(JPEG2000Lossless)
    out = io.BytesIO()
    ds.save_as(out)
    j2k = out.getvalue()
    k = j2k.index(b"\xff\x4f\xff\x51")
    files["j2k-40000.dcm"] = j2k[: k + 8] + struct.pack(">II", 40000, 40000) + j2k[k + 16 :]

    ds = pydicom.dcmread(io.BytesIO(dicom))
    grey = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L").resize((512, 512)))
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "JPEG")
    sof = buf.getvalue()
    k = sof.index(b"\xff\xc0")
    ds.PixelData = encapsulate([sof[: k + 5] + struct.pack(">HH", 60000, 60000) + sof[k + 9 :]])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out)
    files["jpeg-60000.dcm"] = out.getvalue()

    stored = _png(np.zeros((4096, 4096), np.uint8))
    files["stored-60x4096.zip"] = _zip({f"s{k:02}.png": stored for k in range(60)}, zipfile.ZIP_STORED)
    files["under-2gib.nii.gz"] = gzip.compress(_nifti_header((1024, 1024, 1000), body=16 * MB))
    files["over-2gib.nii.gz"] = gzip.compress(_nifti_header((1024, 1024, 1100), body=16 * MB))
    files["needle-1x1xN.nii.gz"] = gzip.compress(_nifti_header((1, 1, 30000)))
    files["one-4096.png"] = _png(np.zeros((4096, 4096), np.uint8))
    big = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L").resize((4096, 4096)), np.float32)
    noise = np.random.default_rng(0).normal(0, 4, big.shape)  # a real scan's noise, so it reads as CT
    files["ct-4096.png"] = _png(np.clip(big + noise, 0, 255).astype(np.uint8))

    for name in ("=cmd|' /C calc'!A0.png", "+SUM(1+1).png", "@x.png", "-2+3.png", "a\r\nb\tc\u202egnp.png"):
        files[f"names-{len(files)}.zip"] = _zip({name: jpeg})

    rng = np.random.default_rng(88)
    originals = {"m.dcm": dicom, "m.jpg": jpeg, "m.zip": _zip({"a.dcm": dicom, "b.jpg": jpeg})}
    while len(files) < 88:
        name, data = list(originals.items())[len(files) % len(originals)]
        files[f"mutant-{len(files)}-{name}"] = mutate(data, rng)
    files.update(dicom_header_cases(dicom))
    return files


def _post(url: str, name: str, data: bytes, timeout: float) -> tuple[int, bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode("utf-8", "surrogatepass") + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _unsafe_text(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segmenter.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--pid", type=int, required=True, help="the server process whose memory is measured")
    parser.add_argument("--data-root", type=Path,
                        default=DEFAULT_DATA_ROOT)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="write the per-file results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    api = args.url.rstrip("/") + "/api/v1/analyses"
    files = corpus(args.data_root)
    start_rss, _ = _rss_kb(args.pid)
    rows, failures = [], []
    for name, data in files.items():
        before, _ = _rss_kb(args.pid)
        t0 = time.perf_counter()
        try:
            status, body, kind = _post(api, name, data, args.timeout)
        except (TimeoutError, urllib.error.URLError) as exc:
            status, body, kind = 0, str(exc).encode(), ""
        seconds = time.perf_counter() - t0
        rss, peak = _rss_kb(args.pid)
        row = {"file": name, "bytes": len(data), "status": status, "json": kind.startswith("application/json"),
               "seconds": round(seconds, 2), "rss_mb": rss // 1024, "peak_mb": peak // 1024,
               "growth_mb": (rss - before) // 1024}
        if status == 201:
            result = json.loads(body)
            names = [s["name"] for s in result.get("slices", [])]
            row["unsafe_names"] = [n for n in names if _unsafe_text(n)]
            if result.get("links", {}).get("report_csv"):
                text = _get(urllib.parse.urljoin(args.url, result["links"]["report_csv"]), args.timeout).decode()
                cells = [c for r in csv.reader(io.StringIO(text)) for c in r]
                row["formula_cells"] = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
        problems = []
        if not (200 <= status < 500) or not row["json"]:
            problems.append("not a 2xx/4xx JSON answer")
        if seconds > args.timeout:
            problems.append("slower than the timeout")
        if row["growth_mb"] > 1024:
            problems.append("memory grew by over 1 GB")
        if row["peak_mb"] > 2560:
            problems.append("server past 2.5 GB")
        if name.startswith("dicom-header-") and status != 400:
            problems.append("an undecodable DICOM header not refused with 400")
        if row.get("unsafe_names") or row.get("formula_cells"):
            problems.append("unsafe name or formula cell")
        row["problems"] = problems
        rows.append(row)
        if problems:
            failures.append(row)
        log.info(f"{status:3} {seconds:6.2f} s  rss {rss // 1024:5} MB  peak {peak // 1024:5} MB  {name[:50]!a}"
              + (f"  <- {', '.join(problems)}" if problems else ""))
    log.info(f"{len(rows)} files, {len(failures)} with problems; server rss {start_rss // 1024} MB at the start, "
          f"peak {max(r['peak_mb'] for r in rows)} MB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
