"""Whole CT volumes: NIfTI files read with nibabel, one axial slice at a time.

Axial slices are taken along whichever array axis the affine maps closest to the body's
superior-inferior axis, and each is turned to the radiological display convention
(anterior at the top, the patient's right on the image's left), so the file's own axis
order and flips do not matter. Intensities are the stored values after the header's
scl_slope / scl_inter, i.e. Hounsfield units for CT, windowed like DICOM. Slices are
returned from head to feet, with the voxel size as pixel spacing and slice thickness, each
carrying the volume's geometry (geometry.VolumeGeometry) so that labels can be put back on
the input's voxel grid (ml.exports).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence

import numpy as np

from .geometry import VolumeGeometry
from .imaging import (
    MAX_DECODED_PIXELS,
    MAX_SLICE_PIXELS,
    MAX_SPACING_MM,
    MIN_SLICE_SIDE,
    CTSlice,
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


def _gunzip(data: bytes, size: int) -> bytearray:
    """The first ``size`` bytes that gzip ``data`` inflates to (fewer if it ends first),
    inflated into one buffer of that size: nothing past ``size`` is ever inflated."""
    out = bytearray(size)
    view, filled = memoryview(out), 0
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    tail = memoryview(data)
    try:
        while filled < size and len(tail) and not inflater.eof:
            chunk = inflater.decompress(tail[: 1 << 20] if not inflater.unconsumed_tail else inflater.unconsumed_tail,
                                        min(size - filled, 1 << 24))
            if not inflater.unconsumed_tail:
                tail = tail[1 << 20 :]
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
    except zlib.error as exc:
        raise UnreadableImage("the .gz file is damaged", code="damaged_gzip") from exc
    del view
    if filled < size:
        del out[filled:]
    return out


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
    data: bytes,
    name: str = "volume.nii",
    max_bytes: int = MAX_VOLUME_BYTES,
    max_slices: int = MAX_VOLUME_SLICES,
    max_pixels: int = MAX_DECODED_PIXELS,
) -> VolumeSlices:
    """A NIfTI-1/2 file (optionally gzipped) -> its axial CTSlices, head to feet, made one
    at a time as they are reached (VolumeSlices).

    The header is read and checked first (dimensions, data type, geometry, and the
    decoded size against ``max_bytes``, ``max_slices`` and ``max_pixels``); only then is
    the data inflated, and never past the size the header declares.
    """
    gz = data[:2] == GZIP_MAGIC
    header = _header(bytes(_gunzip(data, HEADER_BYTES)) if gz else data[:HEADER_BYTES])
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
    body = _gunzip(data, size) if gz else data
    if len(body) < size:
        raise UnreadableImage(
            f"the volume's data are cut short ({len(body):,} of {size:,} bytes)",
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
        volume=np.ndarray(shape[:3], dtype=dtype, buffer=body, offset=offset, order="F"),
        geometry=geometry,
        name=name,
        slope=slope,
        inter=inter,
        spacing=spacing if all(0 < s <= MAX_SPACING_MM for s in spacing) else None,
        thickness=thickness if 0 < thickness <= MAX_SPACING_MM else None,
    )


class VolumeSlices(Sequence[CTSlice]):
    """The axial slices of a read NIfTI volume, head to feet, each made when it is asked
    for: the volume's voxels are held once (as read), and a slice's pixels and HU exist
    only while someone holds that slice. Indexing and iteration give fresh CTSlices.

    Every slice is calibrated (Hounsfield units from the header's scaling) and grey, so
    ``ctcheck.check_ct`` accepts each without looking at its pixels.
    """

    def __init__(self, *, volume: np.ndarray, geometry: VolumeGeometry, name: str, slope: float, inter: float,
                 spacing: tuple[float, float] | None, thickness: float | None) -> None:
        self._volume = volume
        self._indices = geometry.slice_indices()
        self.geometry = geometry
        self.name = name
        self._slope, self._inter = slope, inter
        self._spacing, self._thickness = spacing, thickness

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[k] for k in range(*position.indices(len(self)))]
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"slice {position} of a {len(self)}-slice volume")
        return self._slice(position)

    def _slice(self, position: int) -> CTSlice:
        k = self._indices[position]
        si_axis = self.geometry.si[0]
        with np.errstate(all="ignore"):
            # The plane turned to the display convention: anterior at the top (row index
            # runs to posterior), the patient's right on the left.
            # A view, not np.take: take copies the whole (Fortran-ordered) volume for every slice.
            where = [slice(None)] * 3
            where[si_axis] = k
            plane = self._volume[tuple(where)].astype(np.float32) * self._slope + self._inter
            plane = np.nan_to_num(self.geometry.to_display(plane), nan=-1000.0, posinf=3000.0, neginf=-1000.0)
            pixels, hu = window(plane), hu_int16(plane)
        return CTSlice(
            pixels=pixels,
            name=f"{self.name}[{position + 1}]",
            calibrated=True,
            pixel_spacing_mm=self._spacing,
            slice_thickness_mm=self._thickness,
            instance_number=position + 1,
            hu=hu,
            volume=self.geometry,
            volume_index=k,
        )
