"""Where a decoded slice came from in its source: what the exports need to put labels back.

Readers attach it to each ``CTSlice`` (see imaging and volumes):

* a NIfTI slice carries its volume's ``VolumeGeometry`` (shape, affine and the axis
  mapping to the display convention) and its index along the volume's slice axis;
* a single-frame DICOM slice carries ``dicom_reference(ds)``: the identifying and
  geometric attributes of its instance in the DICOM JSON model (PS3.18 F.2), which
  ``pydicom.Dataset.from_json`` turns back into a data set a DICOM SEG can reference.

Everything here is plain data that survives ``json.dumps``: nothing is pickled. No patient
or study description is kept (names, IDs, dates, accession numbers): only UIDs, which tie
a SEG to its source, and the image geometry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: The attributes of a source instance kept for its DICOM SEG: the UIDs that tie the SEG to
#: the instance, its frame of reference, and the plane geometry of its pixels.
DICOM_REFERENCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "InstanceNumber",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
    "ImageOrientationPatient",
)


def dicom_reference(ds) -> dict | None:
    """The DICOM_REFERENCE_KEYWORDS of a pydicom data set that it has, as a DICOM JSON
    dict; None when the instance cannot be referenced (no SOP Instance UID) or a kept
    value does not encode (a damaged element: the exports are then left out, the slice
    is still analysed)."""
    import pydicom

    try:
        kept = pydicom.Dataset()
        for keyword in DICOM_REFERENCE_KEYWORDS:
            if keyword in ds and ds[keyword].value not in (None, ""):
                kept[keyword] = ds[keyword]
        if "SOPInstanceUID" not in kept:
            return None
        return kept.to_json_dict()
    except Exception as exc:  # pydicom raises many types on damaged values
        log.info("a DICOM instance cannot be referenced by the exports: %s", exc.__class__.__name__)
        return None


@dataclass(frozen=True)
class VolumeGeometry:
    """A NIfTI volume's voxel grid and how its axial slices are shown.

    shape: the volume's (3-D) array shape. affine: its 4 x 4 voxel-to-world (RAS+, mm)
    matrix, the header's best affine. xform_code: the header's sform (else qform) code.
    ``lr``, ``ap``, ``si``: (array axis, sign) of the world axes right-left, anterior-
    posterior and superior-inferior, as nibabel's io_orientation gives them (sign +1: the
    index grows towards the patient's right / anterior / superior, RAS+).
    """

    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    lr: tuple[int, int]
    ap: tuple[int, int]
    si: tuple[int, int]
    xform_code: int = 1

    @property
    def slice_count(self) -> int:
        return self.shape[self.si[0]]

    def slice_indices(self) -> list[int]:
        """Indices along the slice axis from head to feet (the order of the read slices)."""
        n = self.slice_count
        return list(range(n - 1, -1, -1)) if self.si[1] > 0 else list(range(n))

    def _plane_axes_swapped(self) -> bool:
        """Whether a plane taken along the slice axis has L-R before A-P."""
        remaining = [a for a in range(3) if a != self.si[0]]
        return remaining.index(self.ap[0]) != 0

    def to_display(self, plane: np.ndarray) -> np.ndarray:
        """A plane taken along the slice axis (its axes the remaining array axes in order)
        -> the display convention: rows from anterior to posterior, columns from the
        patient's right to their left."""
        if self._plane_axes_swapped():
            plane = plane.T
        if self.ap[1] > 0:
            plane = plane[::-1, :]
        if self.lr[1] > 0:
            plane = plane[:, ::-1]
        return plane

    def from_display(self, plane: np.ndarray) -> np.ndarray:
        """The inverse of to_display: a displayed (A-P rows, R-L columns) plane -> the plane
        of the volume's own array axes."""
        if self.lr[1] > 0:
            plane = plane[:, ::-1]
        if self.ap[1] > 0:
            plane = plane[::-1, :]
        if self._plane_axes_swapped():
            plane = plane.T
        return plane

    def volume_from_display(self, planes: list[np.ndarray]) -> np.ndarray:
        """Displayed planes, head to feet (one per slice) -> an array of ``shape``."""
        if len(planes) != self.slice_count:
            raise ValueError(f"{len(planes)} planes for a volume of {self.slice_count} slices")
        first = planes[0]
        out = np.zeros(self.shape, dtype=first.dtype)
        for k, plane in zip(self.slice_indices(), planes):
            index = [slice(None)] * 3
            index[self.si[0]] = k
            out[tuple(index)] = self.from_display(plane)
        return out

    def as_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "affine": [list(row) for row in self.affine],
            "lr": list(self.lr),
            "ap": list(self.ap),
            "si": list(self.si),
            "xform_code": self.xform_code,
        }

    @classmethod
    def from_json(cls, data: dict) -> VolumeGeometry:
        return cls(
            shape=tuple(int(n) for n in data["shape"]),
            affine=tuple(tuple(float(v) for v in row) for row in data["affine"]),
            lr=tuple(int(v) for v in data["lr"]),
            ap=tuple(int(v) for v in data["ap"]),
            si=tuple(int(v) for v in data["si"]),
            xform_code=int(data.get("xform_code", 1)),
        )
