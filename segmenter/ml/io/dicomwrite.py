"""Write a slice of Hounsfield units as a minimal CT DICOM file, the way a scanner would.

Used to send the lesion-free kmader slices through the application as real scans arrive
(``split``, the healthy-DICOM tests): int16 stored values with RescaleSlope 1 and
RescaleIntercept -1024, so stored 0 is -1024 HU, and optional PixelSpacing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: RescaleIntercept of the files written here (a common scanner choice).
RESCALE_INTERCEPT = -1024.0


def write_ct_dicom(hu: np.ndarray, path: Path | str, spacing_mm: tuple[float, float] | None = None,
                   instance: int = 1, *, attributes: dict | None = None) -> Path:
    """float (H, W) HU -> a CT DICOM file at ``path`` (explicit VR little endian); (N, H, W)
    gives a multi-frame file of N frames. ``attributes`` (keyword -> value) are set last,
    e.g. the shared StudyInstanceUID, SeriesInstanceUID and FrameOfReferenceUID and each
    slice's ImagePositionPatient of a series."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    stored = np.clip(np.rint(np.asarray(hu, np.float64) - RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.InstanceNumber = int(instance)
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, RESCALE_INTERCEPT, "HU"
    if spacing_mm is not None:
        ds.PixelSpacing = [float(spacing_mm[0]), float(spacing_mm[1])]
    ds.PixelData = stored.tobytes()
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return Path(path)
