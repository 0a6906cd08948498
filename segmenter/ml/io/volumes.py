"""Whole CT volumes: NIfTI files read with nibabel, one axial slice at a time.

Axial slices are taken along whichever array axis the affine maps closest to the body's
superior-inferior axis, and each is turned to the radiological display convention
(anterior at the top, the patient's right on the image's left), so the file's own axis
order and flips do not matter. Intensities are the stored values after the header's
scl_slope / scl_inter, i.e. Hounsfield units for CT, windowed like DICOM. Slices are
returned from head to feet, with the voxel size as pixel spacing and slice thickness, each
carrying the volume's geometry (geometry.VolumeGeometry) so that labels can be put back on
the input's voxel grid (ml.exports).

The voxels are not held in memory: a gzipped volume is inflated once, in chunks, into an
unnamed temporary file (gone when closed, or when the process ends), and a slice is read
from that file, or from an uncompressed upload's own file, when it is reached. So a
1,000-slice study needs the memory of a slice, not of the volume. Only a volume whose
slices are not contiguous runs in the file (stored with the body's long axis first) is
read whole.
"""

from __future__ import annotations

import io
import tempfile
import threading
from dataclasses import replace
from typing import BinaryIO

import numpy as np
from isal import isal_zlib

from .geometry import VolumeGeometry
from .imaging import (
    MAX_DECODED_PIXELS,
    MAX_SLICE_PIXELS,
    MAX_SPACING_MM,
    MIN_SLICE_SIDE,
    CTSlice,
    LazySlices,
    UnreadableImage,
    hu_int16,
    window,
)

GZIP_MAGIC = b"\x1f\x8b"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Largest NIfTI accepted, after decompression: a 1,000-slice 512 x 512 float32 volume.
MAX_VOLUME_BYTES = 1024**3
MAX_VOLUME_SLICES = 1000
#: The header is the first 348 (NIfTI-1) or 540 (NIfTI-2) bytes.
HEADER_BYTES = 540


def is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def _too_large(size: int, limit: int) -> UnreadableImage:
    return UnreadableImage(
        f"the volume unpacks to {size:,} bytes; the limit is {limit:,}",
        code="volume_too_large",
        params={"size_bytes": size, "limit_bytes": limit},
    )


#: Bytes read from the compressed stream, and inflated at most, per step.
CHUNK_BYTES = 1 << 20


def _inflate(stream: BinaryIO, size: int, into) -> int:
    """Inflate the gzip ``stream`` (from its start) into ``into(chunk)``, at most ``size``
    bytes; how many it gave (fewer if the data end first). Nothing past ``size`` is ever
    inflated, so a bomb costs no more than the size its header declares."""
    stream.seek(0)
    inflater = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)  # ISA-L: ~2 x zlib's speed
    filled, pending = 0, b""
    try:
        while filled < size and not inflater.eof:
            if not pending:
                pending = stream.read(CHUNK_BYTES)
                if not pending:
                    break
            chunk = inflater.decompress(pending, min(size - filled, CHUNK_BYTES))
            pending = inflater.unconsumed_tail
            into(chunk)
            filled += len(chunk)
    except isal_zlib.error as exc:
        raise UnreadableImage("the .gz file is damaged", code="damaged_gzip") from exc
    return filled


def _inflated_head(stream: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    _inflate(stream, size, parts.append)
    return b"".join(parts)


def _inflated_file(stream: BinaryIO, size: int) -> tuple[BinaryIO, int]:
    """The first ``size`` inflated bytes of the gzip ``stream`` in an unnamed temporary
    file, and how many there were."""
    scratch = tempfile.TemporaryFile(prefix="42epochs-volume-")
    try:
        filled = _inflate(stream, size, scratch.write)
    except BaseException:
        scratch.close()
        raise
    return scratch, filled


def _stream_size(stream: BinaryIO) -> int:
    here = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    return end


def _header(head: bytes):
    """The NIfTI-1 or NIfTI-2 header at the start of ``head`` (raises UnreadableImage)."""
    import nibabel as nib

    for cls, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        if len(head) < size or size not in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")):
            continue
        try:
            header = cls.from_fileobj(io.BytesIO(head[:size]), check=False)
            magic = header["magic"].item()
            header.get_data_dtype()
        except Exception:  # nibabel raises many types on foreign or damaged headers
            continue
        if magic in (b"ni1", b"ni2"):
            raise UnreadableImage(
                "this is the header of a .hdr/.img pair; upload a single .nii or .nii.gz file", code="nifti_pair"
            )
        if magic in (b"n+1", b"n+2"):
            return header
    raise UnreadableImage("not a NIfTI volume", code="not_nifti")


def _orientation(header) -> dict[int, tuple[int, int]]:
    """world axis (0 R-L, 1 A-P, 2 S-I) -> (array axis, sign) from the header's affine."""
    from nibabel.orientations import io_orientation

    affine = header.get_best_affine()
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise UnreadableImage(
            "the volume's affine (its voxel-to-patient geometry) is zero or not finite", code="volume_orientation"
        )
    ornt = io_orientation(affine)
    axis_of = {int(world): (k, int(sign)) for k, (world, sign) in enumerate(ornt[:3]) if np.isfinite(world)}
    if set(axis_of) != {0, 1, 2}:
        raise UnreadableImage("the volume's affine does not describe a proper orientation", code="volume_orientation")
    return axis_of


def read_nifti(
    data: bytes | BinaryIO,
    name: str = "volume.nii",
    max_bytes: int = MAX_VOLUME_BYTES,
    max_slices: int = MAX_VOLUME_SLICES,
    max_pixels: int = MAX_DECODED_PIXELS,
) -> VolumeSlices:
    """A NIfTI-1/2 file (optionally gzipped; its bytes, or a seekable binary file) -> its
    axial CTSlices, head to feet, made one at a time as they are reached (VolumeSlices).

    The header is read and checked first (dimensions, data type, geometry, and the
    decoded size against ``max_bytes``, ``max_slices`` and ``max_pixels``); only then is
    the data inflated, and never past the size the header declares. An uncompressed
    volume's slices are read from ``data`` itself as they are reached, so a file passed
    in must stay open while they are; close the VolumeSlices (or use it as a context
    manager) to drop its temporary file at once.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    stream.seek(0)
    gz = stream.read(2) == GZIP_MAGIC
    stream.seek(0)
    header = _header(_inflated_head(stream, HEADER_BYTES) if gz else stream.read(HEADER_BYTES))
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise UnreadableImage(
            f"voxels of type {dtype} are not CT numbers (expected integers or floats)",
            code="volume_dtype",
            params={"dtype": str(dtype)},
        )
    if len(shape) < 3 or any(n < 1 for n in shape[:3]):
        raise UnreadableImage(
            f"expected a 3-D volume, got shape {shape}", code="volume_not_3d", params={"shape": str(shape)}
        )
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise UnreadableImage(
            f"expected one 3-D volume, got {shape[3]} volumes (4-D)", code="volume_4d", params={"count": shape[3]}
        )
    axis_of = _orientation(header)
    lr_axis, ap_axis, si_axis = (axis_of[world][0] for world in range(3))
    rows, cols, n = shape[ap_axis], shape[lr_axis], shape[si_axis]
    if rows * cols > MAX_SLICE_PIXELS:
        raise UnreadableImage(
            f"slices of {cols}x{rows} pixels exceed the limit",
            code="volume_slices_too_large",
            params={"width": cols, "height": rows, "limit": MAX_SLICE_PIXELS},
        )
    if min(rows, cols) < MIN_SLICE_SIDE:
        raise UnreadableImage(
            f"slices of {cols}x{rows} pixels are too small; each side must be at least {MIN_SLICE_SIDE}",
            code="image_too_small",
            params={"width": cols, "height": rows, "min_side": MIN_SLICE_SIDE},
        )
    if n > max_slices:
        raise UnreadableImage(
            f"the volume holds {n} slices; the limit is {max_slices}",
            code="volume_too_many_slices",
            params={"count": n, "limit": max_slices},
        )
    if rows * cols * n > max_pixels:
        raise UnreadableImage(
            f"the volume holds {rows * cols * n / 1e6:,.0f} million voxels; the limit is {max_pixels / 1e6:,.0f} million",
            code="pixel_budget",
            params={"what": name, "limit_mpixels": round(max_pixels / 1e6),
                    "over_mpixels": round((rows * cols * n - max_pixels) / 1e6, 1)},
        )
    # The data follow the header and its 4-byte extension flag at the least, whatever
    # vox_offset says (some writers leave it 0).
    offset = max(int(header.get_data_offset()), header.sizeof_hdr + 4)
    size = offset + int(np.prod(shape)) * dtype.itemsize
    if size > max_bytes:
        raise _too_large(size, max_bytes)
    body, length = _inflated_file(stream, size) if gz else (stream, _stream_size(stream))
    if length < size:
        if gz:
            body.close()
        raise UnreadableImage(
            f"the volume's data are cut short ({length:,} of {size:,} bytes)",
            code="damaged_volume",
            params={"detail": "truncated"},
        )
    slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    zooms = header.get_zooms()
    spacing = (float(zooms[ap_axis]), float(zooms[lr_axis]))
    thickness = float(zooms[si_axis])
    affine = header.get_best_affine()
    sform_code, qform_code = int(header.get_sform(coded=True)[1]), int(header.get_qform(coded=True)[1])
    geometry = VolumeGeometry(
        shape=shape[:3],
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        lr=axis_of[0],
        ap=axis_of[1],
        si=axis_of[2],
        xform_code=sform_code or qform_code or 1,
    )
    return VolumeSlices(
        voxels=Voxels(body, offset, shape[:3], dtype, owned=gz),
        geometry=geometry,
        name=name,
        slope=slope,
        inter=inter,
        spacing=spacing if all(0 < s <= MAX_SPACING_MM for s in spacing) else None,
        thickness=thickness if 0 < thickness <= MAX_SPACING_MM else None,
    )


class Voxels:
    """A volume's voxels in a binary file (Fortran order from ``offset``), read one plane
    along an array axis at a time; ``owned`` files (the temporary one an inflated volume
    lives in) are closed with it. Planes across the last axis are one contiguous read,
    across the middle axis one read per column of planes; across the first axis every
    voxel is apart, so that volume is read into memory whole, once."""

    def __init__(self, file: BinaryIO, offset: int, shape: tuple[int, int, int], dtype: np.dtype, owned: bool) -> None:
        self.file, self.offset, self.shape, self.dtype, self.owned = file, offset, shape, np.dtype(dtype), owned
        self._whole: np.ndarray | None = None
        self._lock = threading.Lock()  # one seek-and-read at a time

    def _read(self, start: int, count: int) -> np.ndarray:
        self.file.seek(self.offset + start * self.dtype.itemsize)
        out = np.empty(count, self.dtype)
        got = self.file.readinto(memoryview(out).cast("B"))
        if got != out.nbytes:
            raise UnreadableImage("the volume's data ended while it was read", code="damaged_volume",
                                  params={"detail": "truncated"})
        return out

    def plane(self, axis: int, k: int) -> np.ndarray:
        """The (n_a, n_b) plane at index ``k`` along ``axis``; a, b the other axes in order."""
        s0, s1, s2 = self.shape
        with self._lock:
            if axis == 2:
                return self._read(k * s0 * s1, s0 * s1).reshape((s0, s1), order="F")
            if axis == 1:
                out = np.empty((s0, s2), self.dtype, order="F")
                for m in range(s2):
                    out[:, m] = self._read(s0 * (k + s1 * m), s0)
                return out
            if self._whole is None:
                self._whole = self._read(0, s0 * s1 * s2).reshape(self.shape, order="F")
            return self._whole[k]

    def close(self) -> None:
        self._whole = None
        if self.owned:
            self.file.close()


class VolumeSlices(LazySlices):
    """The axial slices of a read NIfTI volume, head to feet, each made when it is asked
    for: a slice's voxels are read, and its pixels and HU exist, only while someone holds
    that slice. Closing it (or leaving it as a context manager) removes an inflated
    volume's temporary file; otherwise that goes when the object is collected.

    Every slice is calibrated (Hounsfield units from the header's scaling) and grey, so
    ``ctcheck.check_ct`` accepts each without looking at its pixels.
    """

    def __init__(self, *, voxels: Voxels, geometry: VolumeGeometry, name: str, slope: float, inter: float,
                 spacing: tuple[float, float] | None, thickness: float | None) -> None:
        self._voxels = voxels
        self._indices = geometry.slice_indices()
        self.geometry = geometry
        self.name = name
        self._slope, self._inter = slope, inter
        self.headers = [
            CTSlice(
                pixels=np.zeros((0, 0), np.uint8),
                name=f"{name}[{position + 1}]",
                calibrated=True,
                pixel_spacing_mm=spacing,
                slice_thickness_mm=thickness,
                instance_number=position + 1,
                volume=geometry,
                volume_index=k,
            )
            for position, k in enumerate(self._indices)
        ]

    def close(self) -> None:
        self._voxels.close()

    def _slice(self, position: int) -> CTSlice:
        k = self._indices[position]
        with np.errstate(all="ignore"):
            # The plane turned to the display convention: anterior at the top (row index
            # runs to posterior), the patient's right on the left.
            plane = self._voxels.plane(self.geometry.si[0], k).astype(np.float32) * self._slope + self._inter
            plane = np.nan_to_num(self.geometry.to_display(plane), nan=-1000.0, posinf=3000.0, neginf=-1000.0)
        return replace(self.headers[position], pixels=window(plane), hu=hu_int16(plane))
