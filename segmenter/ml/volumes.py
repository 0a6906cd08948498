"""Whole CT volumes: NIfTI files read with nibabel, one axial slice at a time.

Axial slices are taken along whichever array axis the affine maps closest to the body's
superior-inferior axis, and each is turned to the radiological display convention
(anterior at the top, the patient's right on the image's left), so the file's own axis
order and flips do not matter. Intensities are the stored values after the header's
scl_slope / scl_inter, i.e. Hounsfield units for CT, windowed like DICOM. Slices are
returned from head to feet, with the voxel size as pixel spacing and slice thickness.
"""

from __future__ import annotations

import io
import zlib

import numpy as np

from .imaging import MAX_SLICE_PIXELS, MAX_SPACING_MM, CTSlice, UnreadableImage, window

GZIP_MAGIC = b"\x1f\x8b"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Largest NIfTI accepted, after decompression.
MAX_VOLUME_BYTES = 2 * 1024**3


def is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def _too_large(limit: int) -> UnreadableImage:
    return UnreadableImage(
        f"the volume unpacks to more than {limit:,} bytes", code="volume_too_large", params={"limit_bytes": limit}
    )


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip data, refusing output above ``limit`` bytes (a gzip bomb)."""
    out = io.BytesIO()
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        for start in range(0, len(data), 1 << 20):
            out.write(decomp.decompress(data[start : start + (1 << 20)], limit + 1 - out.tell()))
            if out.tell() > limit:
                raise _too_large(limit)
        out.write(decomp.flush())
    except zlib.error as exc:
        raise UnreadableImage("the .gz file is damaged", code="damaged_gzip") from exc
    if out.tell() > limit:
        raise _too_large(limit)
    return out.getvalue()


def read_nifti(data: bytes, name: str = "volume.nii", max_bytes: int = MAX_VOLUME_BYTES) -> list[CTSlice]:
    """A NIfTI-1/2 file (optionally gzipped) -> axial CTSlices, head to feet."""
    import nibabel as nib
    from nibabel.orientations import io_orientation

    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data, max_bytes)
    image = None
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = cls.from_bytes(data)
            break
        except Exception:  # nibabel raises many types on foreign or damaged headers
            continue
    if image is None:
        raise UnreadableImage("not a NIfTI volume", code="not_nifti")
    shape = image.shape
    if len(shape) < 3 or any(n < 1 for n in shape[:3]):
        raise UnreadableImage(
            f"expected a 3-D volume, got shape {shape}", code="volume_not_3d", params={"shape": str(shape)}
        )
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise UnreadableImage(
            f"expected one 3-D volume, got {shape[3]} volumes (4-D)", code="volume_4d", params={"count": shape[3]}
        )
    # io_orientation: for each array axis, the world axis (0 R-L, 1 A-P, 2 S-I) and the
    # sign (+1 when the index runs towards R, A, S).
    ornt = io_orientation(image.affine)
    axis_of = {int(world): (k, int(sign)) for k, (world, sign) in enumerate(ornt[:3])}
    if set(axis_of) != {0, 1, 2}:
        raise UnreadableImage("the volume's affine does not describe a proper orientation", code="volume_orientation")
    lr_axis, lr_sign = axis_of[0]
    ap_axis, ap_sign = axis_of[1]
    si_axis, si_sign = axis_of[2]
    rows, cols = shape[ap_axis], shape[lr_axis]
    if rows * cols > MAX_SLICE_PIXELS:
        raise UnreadableImage(
            f"slices of {cols}x{rows} pixels exceed the limit",
            code="volume_slices_too_large",
            params={"width": cols, "height": rows, "limit": MAX_SLICE_PIXELS},
        )
    zooms = image.header.get_zooms()
    spacing = (float(zooms[ap_axis]), float(zooms[lr_axis]))
    thickness = float(zooms[si_axis])
    n = shape[si_axis]
    # Head to feet: walk the S-I axis from its superior end.
    order = range(n - 1, -1, -1) if si_sign > 0 else range(n)
    proxy = image.dataobj
    slices = []
    for position, k in enumerate(order):
        index: list = [slice(None)] * len(shape)
        index[si_axis] = k
        for extra in range(3, len(shape)):
            index[extra] = 0
        try:
            plane = np.asarray(proxy[tuple(index)], dtype=np.float32)
        except (ValueError, OSError, EOFError) as exc:
            raise UnreadableImage(
                f"the volume's data are damaged ({exc})", code="damaged_volume", params={"detail": str(exc)}
            ) from exc
        # plane's axes are the remaining array axes in order; put A-P on rows, L-R on columns.
        remaining = [a for a in range(3) if a != si_axis]
        if remaining.index(ap_axis) != 0:
            plane = plane.T
        # Display: anterior at the top (row index runs to posterior), patient's right on the
        # left (column index runs to the patient's left).
        if ap_sign > 0:
            plane = plane[::-1, :]
        if lr_sign > 0:
            plane = plane[:, ::-1]
        slices.append(
            CTSlice(
                pixels=window(np.nan_to_num(plane, nan=-1000.0)),
                name=f"{name}[{position + 1}]",
                calibrated=True,
                pixel_spacing_mm=spacing if all(0 < s <= MAX_SPACING_MM for s in spacing) else None,
                slice_thickness_mm=thickness if thickness and 0 < thickness <= MAX_SPACING_MM else None,
                instance_number=position + 1,
            )
        )
    return slices
