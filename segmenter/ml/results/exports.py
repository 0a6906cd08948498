"""Label maps in the formats other tools open: a NIfTI label volume and a DICOM SEG.

A study's label maps are (H, W) uint8 arrays in the display order of its slices (see
constants for the classes; slices head to feet). ``source_geometry`` describes, as JSON,
where those slices lie in the source:

* a NIfTI volume: its ``VolumeGeometry``; the label volume then has the input's shape and
  affine, each label map put back on the input's own voxel grid;
* one DICOM series of single-frame instances with a common plane geometry: the
  instances' referencing attributes (geometry.dicom_reference) and the affine of the grid
  they span. The label volume's array is (columns, rows, slices), slices in the study's
  order, with that affine (RAS+, mm). A DICOM SEG is made when the instances also name a
  frame of reference (a SEG must share it); it references every instance.

Exported label values (NIfTI voxels; SEG segment numbers), MedSeg's convention for the
first two: 0 background, 1 ground-glass opacity, 2 consolidation, 3 other lung (the SEG
holds only the two lesion segments).
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Sequence

import numpy as np

from ..constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from ..io.geometry import VolumeGeometry
from ..io.imaging import CTSlice

log = logging.getLogger(__name__)

#: Label map class -> value in the exports.
EXPORT_VALUES = {BACKGROUND: 0, GGO: 1, CONSOLIDATION: 2, OTHER_LUNG: 3}
#: What the values mean, written into the NIfTI header (its 80-character descrip field).
NIFTI_DESCRIPTION = "labels: 0 background, 1 GGO, 2 consolidation, 3 other lung"
#: The SEG's segments: (segment number, label, SNOMED/DCM property type code).
SEG_SEGMENTS = (
    (1, "Ground-glass opacity", ("112120", "DCM", "Ground glass opacity")),
    (2, "Consolidation", ("95436008", "SCT", "Lung consolidation")),
)
#: Positions along the slice normal may deviate from an even step by this share of the
#: step and still be one grid (a NIfTI affine has a single slice step).
STEP_TOLERANCE = 0.05
#: DICOM's patient axes (LPS+) to NIfTI's (RAS+).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MANUFACTURER = "42-EPOCHS"
MODEL_NAME = "42-EPOCHS COVID-19 CT lesion segmenter"
SEG_SERIES_NUMBER = 4242
SEG_DESCRIPTION = "GGO and consolidation (research use only, not for diagnosis)"


def export_labels(labels: np.ndarray) -> np.ndarray:
    """A label map (any shape, the classes of constants) -> uint8 export values."""
    lookup = np.zeros(256, np.uint8)
    for cls, value in EXPORT_VALUES.items():
        lookup[cls] = value
    return lookup[np.asarray(labels, dtype=np.uint8)]


# --- Geometry of the source, as JSON ---------------------------------------------------


def source_geometry(slices: Sequence[CTSlice]) -> dict | None:
    """JSON-ready geometry of the slices' source, in the slices' order: {"kind": "nifti",
    "volume": VolumeGeometry.as_json()} or {"kind": "dicom", "affine", "seg", "instances"};
    None when no export can place the labels (images, mixed or irregular series)."""
    if not slices:
        return None
    volume = slices[0].volume
    if volume is not None:
        same = all(s.volume == volume for s in slices)
        if same and [s.volume_index for s in slices] == volume.slice_indices():
            return {"kind": "nifti", "volume": volume.as_json()}
        return None
    if all(s.dicom is not None for s in slices):
        return _dicom_geometry([s.dicom for s in slices], slices[0].slice_thickness_mm)
    return None


def _value(ref: dict, keyword: str):
    """An attribute's values from a DICOM JSON dict (None if absent)."""
    from pydicom.datadict import tag_for_keyword

    element = ref.get(f"{tag_for_keyword(keyword):08X}")
    return None if element is None else element.get("Value")


def _dicom_geometry(refs: list[dict], thickness: float | None) -> dict | None:
    def first(ref, keyword):
        value = _value(ref, keyword)
        return value[0] if value else None

    series = {first(r, "SeriesInstanceUID") for r in refs}
    shapes = {(first(r, "Rows"), first(r, "Columns")) for r in refs}
    instances = {first(r, "SOPInstanceUID") for r in refs}
    if len(series) != 1 or None in series or len(shapes) != 1 or len(instances) != len(refs):
        return None  # not one series, or an instance given twice
    try:
        orientation = np.array([_value(r, "ImageOrientationPatient") for r in refs], dtype=float)
        spacing = np.array([_value(r, "PixelSpacing") for r in refs], dtype=float)
        positions = np.array([_value(r, "ImagePositionPatient") for r in refs], dtype=float)
    except (TypeError, ValueError):  # an attribute missing or of the wrong length
        return None
    if orientation.shape != (len(refs), 6) or spacing.shape != (len(refs), 2) or positions.shape != (len(refs), 3):
        return None
    if not (np.allclose(orientation, orientation[0], atol=1e-4) and np.allclose(spacing, spacing[0], atol=1e-4)):
        return None
    row_dir, col_dir = orientation[0][:3], orientation[0][3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3) or not (spacing[0] > 0).all():
        return None
    if len(refs) > 1:
        step = (positions[-1] - positions[0]) / (len(refs) - 1)
        expected = positions[0] + np.outer(np.arange(len(refs)), step)
        size = np.linalg.norm(step)
        if size == 0 or np.abs(positions - expected).max() > STEP_TOLERANCE * size:
            return None
    else:
        step = normal * (thickness or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[0][1]  # along a row: the column index grows
    lps[:3, 1] = col_dir * spacing[0][0]  # down a column: the row index grows
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    frames = {first(r, "FrameOfReferenceUID") for r in refs}
    return {
        "kind": "dicom",
        "affine": (LPS_TO_RAS @ lps).tolist(),
        "seg": len(frames) == 1 and None not in frames,
        "instances": refs,
    }


def orientation_of(geometry: dict | None) -> dict | None:
    """The input's orientation for report.json: the axis codes of its voxel grid (where
    each array index grows towards, nibabel's aff2axcodes, e.g. ["L", "P", "S"]) and, for
    DICOM, the ImageOrientationPatient of its instances."""
    if geometry is None:
        return None
    from nibabel.orientations import aff2axcodes

    if geometry["kind"] == "nifti":
        affine = np.asarray(geometry["volume"]["affine"])
        return {"source": "nifti", "axis_codes": list(aff2axcodes(affine))}
    affine = np.asarray(geometry["affine"])
    return {
        "source": "dicom",
        "axis_codes": list(aff2axcodes(affine)),
        "image_orientation_patient": [float(v) for v in _value(geometry["instances"][0], "ImageOrientationPatient")],
    }


# --- The exports -------------------------------------------------------------------------


def labels_nifti(labels: Sequence[np.ndarray], geometry: dict) -> bytes:
    """The label maps (slice order) as a gzipped NIfTI-1 label volume on the source's grid."""
    import nibabel as nib

    planes = [export_labels(a) for a in labels]
    if geometry["kind"] == "nifti":
        volume = VolumeGeometry.from_json(geometry["volume"])
        data = volume.volume_from_display(planes)
        affine, code = np.asarray(volume.affine), volume.xform_code
    else:
        data = np.ascontiguousarray(np.stack(planes).transpose(2, 1, 0))  # (columns, rows, slices)
        affine, code = np.asarray(geometry["affine"]), 1  # scanner coordinates
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=code)
    image.set_qform(affine, code=code)
    image.header.set_data_dtype(np.uint8)
    image.header["descrip"] = NIFTI_DESCRIPTION.encode()
    image.header.set_intent("label", name="labels")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(image.to_bytes())
    return buf.getvalue()


#: The patient and study attributes a SEG or SR copies from its source: never stored here,
#: empty in a download, copied from the source's own header when sent back to its PACS.
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)


def patient_study_of(dataset) -> dict:
    """The patient and study module attributes of a source header, as DICOM JSON."""
    import pydicom

    kept = pydicom.Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in dataset:
            setattr(kept, keyword, dataset.data_element(keyword).value)
    return kept.to_json_dict()


def source_datasets(refs: list[dict], patient_study: dict | None = None):
    """The instances a SEG or SR references, rebuilt from their kept attributes. Patient and
    study descriptions were not kept: they stay empty (type 2) unless ``patient_study``
    (DICOM JSON, ``patient_study_of`` a source header) gives them; the UIDs tie the
    result to its source either way."""
    import pydicom

    datasets = []
    copied = pydicom.Dataset.from_json(patient_study) if patient_study else pydicom.Dataset()
    for ref in refs:
        ds = pydicom.Dataset.from_json(ref)
        for keyword in PATIENT_STUDY_KEYWORDS:
            setattr(ds, keyword, copied.get(keyword, ""))
        if "Modality" not in ds:
            ds.Modality = "CT"  # as the reader took it
        datasets.append(ds)
    return datasets


def result_uids(seed: str | None, what: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of a result object ("seg", "sr"): derived from
    ``seed`` (an analysis' id) so that the same analysis always sends the same objects, and
    sending twice stores nothing twice; random without a seed."""
    from pydicom.uid import generate_uid

    if seed is None:
        return generate_uid(), generate_uid()
    series = generate_uid(entropy_srcs=[seed, what, "series"])
    return series, generate_uid(entropy_srcs=[seed, what, "instance"])


def dicom_seg(labels: Sequence[np.ndarray], geometry: dict, model_version: str, *, seed: str | None = None,
              patient_study: dict | None = None) -> bytes:
    """The label maps (slice order, one per instance) as a DICOM SEG (binary segments GGO
    and consolidation) that references every instance; bytes of a Part 10 file. ``seed``
    makes its UIDs stable (``result_uids``); ``patient_study`` fills its patient and study
    modules (``source_datasets``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if geometry.get("kind") != "dicom" or not geometry.get("seg"):
        raise ValueError("a DICOM SEG needs a DICOM series with a frame of reference")
    sources = source_datasets(geometry["instances"], patient_study)
    series_uid, sop_uid = result_uids(seed, "seg")
    values = np.stack([export_labels(a) for a in labels])
    segments = np.where(values <= len(SEG_SEGMENTS), values, 0).astype(np.uint8)  # other lung -> 0
    algorithm = hd.AlgorithmIdentificationSequence(
        name=MODEL_NAME, version=model_version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=hd.sr.CodedConcept(*code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, label, code in SEG_SEGMENTS
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=model_version,
        device_serial_number="0",
        series_description=SEG_DESCRIPTION,
        content_description="GGO and consolidation",
        content_label="LESIONS",
    )
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()
