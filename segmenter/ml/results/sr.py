"""A study's measurements as a DICOM SR measurement report (TID 1500, Comprehensive 3D SR).

For the lungs together (the numbers of report.json's study row) and, where every slice's
lungs lie side by side, for the patient's right and left lung (split as
``severity.split_sides`` splits them): the lung volume, the GGO and consolidation volumes
(mL; only when the slices' spacing and thickness are known), the lesion share of the lung
(%, from pixel counts as in report.json) and the CT-0…CT-4 grade. The report references
every source instance (its evidence), names the model and its version (the observing
device and the measurements' algorithm) and says in a comment and its series description
that it is for research, not diagnosis.

DICOM has standard codes for a volume, the lungs and their sides, but none for GGO or
consolidation volume, lesion share or the Moscow CT grade: those use the private coding
scheme ``99EPOCHS`` (CODE_SCHEME), with the meanings written out.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..constants import CONSOLIDATION, GGO
from .exports import MANUFACTURER, MODEL_NAME, result_uids, source_datasets
from .reports import DISCLAIMER
from .severity import Areas, grade_for, split_sides

SR_SERIES_NUMBER = 4243
SR_DESCRIPTION = "Lung damage measurements (research use only, not for diagnosis)"
CODE_SCHEME = "99EPOCHS"
#: Private concepts (code value, meaning) for what DICOM has no code for.
GGO_VOLUME = ("GGO-VOL", "Ground-glass opacity volume")
CONSOLIDATION_VOLUME = ("CONS-VOL", "Consolidation volume")
LESION_SHARE = ("LESION-SHARE", "Lesion share of the lung")
SEVERITY = ("CT-GRADE", "CT severity grade (CT-0 to CT-4)")
#: UCUM's millilitre (pydicom's code dictionary has no entry for it).
MILLILITRE = ("mL", "UCUM", "milliliter")


@dataclass(frozen=True)
class Region:
    """One region's numbers: volumes in mL (None where unknown), lesion share in % (None
    without lung), grade CT-0…CT-4 (None without lung)."""

    name: str  # "lungs", "right lung", "left lung"
    lung_ml: float | None
    ggo_ml: float | None
    consolidation_ml: float | None
    lesion_percent: float | None
    grade: str | None


def _region(name: str, ggo: float, cons: float, lung: float, ml: tuple | None) -> Region:
    share = 100.0 * (ggo + cons) / lung if lung > 0 else None
    ggo_ml, cons_ml, lung_ml = ml if ml is not None else (None, None, None)
    return Region(name, lung_ml, ggo_ml, cons_ml, share, grade_for(ggo + cons, lung))


def regions(labels: Sequence[np.ndarray], areas: Sequence[Areas], total: Areas) -> list[Region]:
    """The lungs (from ``total``, report.json's study row) and, where every slice with lung
    has its sides apart, the right and left lung, from each slice's label map (H, W)
    uint8 and Areas (their volumes per pixel)."""
    both = (total.ggo_ml, total.consolidation_ml, total.lung_ml) if total.lung_ml is not None else None
    result = [_region("lungs", total.ggo, total.consolidation, total.lung, both)]
    sides = {"right lung": np.zeros(6), "left lung": np.zeros(6)}  # ggo, cons, lung px; ggo, cons, lung mL
    volumes = True
    for plane, area in zip(labels, areas):
        if area.lung == 0:
            continue
        split = split_sides(plane)
        if split is None:
            return result
        if area.lung_ml is None:
            volumes = False
        ml_per_px = (area.lung_ml or 0.0) / area.lung
        for name, mask in zip(sides, split):
            counts = np.array(
                [
                    np.count_nonzero(mask & (plane == GGO)),
                    np.count_nonzero(mask & (plane == CONSOLIDATION)),
                    np.count_nonzero(mask),
                ],
                float,
            )
            sides[name] += np.concatenate([counts, counts * ml_per_px])
    for name, v in sides.items():
        result.append(_region(name, v[0], v[1], v[2], tuple(float(x) for x in v[3:]) if volumes else None))
    return result


def measurement_report(
    labels: Sequence[np.ndarray],
    areas: Sequence[Areas],
    total: Areas,
    geometry: dict,
    model_version: str,
    *,
    seed: str | None = None,
    patient_study: dict | None = None,
) -> bytes:
    """The SR (bytes of a Part 10 file) of a DICOM series' results: see the module's
    docstring. ``geometry``: ml.results.exports.source_geometry of a DICOM series;
    ``seed`` makes its UIDs stable; ``patient_study`` fills its patient and study modules."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if geometry.get("kind") != "dicom":
        raise ValueError("a DICOM SR needs a DICOM series")
    sources = source_datasets(geometry["instances"], patient_study)
    series_uid, sop_uid = result_uids(seed, "sr")
    model = f"{MODEL_NAME} {model_version}"
    algorithm = hd.sr.AlgorithmIdentification(name=MODEL_NAME, version=model_version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uids(seed, "device")[1],
            name="42-EPOCHS",
            manufacturer_name=MANUFACTURER,
            model_name=model,
        ),
    )

    def private(code: tuple[str, str]):
        return hd.sr.CodedConcept(code[0], CODE_SCHEME, code[1])

    sites = {
        "lungs": hd.sr.FindingSite(codes.SCT.Lung),
        "right lung": hd.sr.FindingSite(codes.SCT.Lung, laterality=codes.SCT.Right),
        "left lung": hd.sr.FindingSite(codes.SCT.Lung, laterality=codes.SCT.Left),
    }
    groups = []
    for region in regions(labels, areas, total):
        measurements = []
        for name, value in (
            (codes.SCT.Volume, region.lung_ml),
            (private(GGO_VOLUME), region.ggo_ml),
            (private(CONSOLIDATION_VOLUME), region.consolidation_ml),
        ):
            if value is not None:
                measurements.append(
                    hd.sr.Measurement(
                        name=name,
                        value=round(value, 3),
                        unit=hd.sr.CodedConcept(*MILLILITRE),
                        algorithm_id=algorithm,
                    )
                )
        if region.lesion_percent is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=private(LESION_SHARE),
                    value=round(region.lesion_percent, 4),
                    unit=codes.UCUM.Percent,
                    algorithm_id=algorithm,
                )
            )
        evaluations = []
        if region.grade is not None:
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=private(SEVERITY), value=hd.sr.CodedConcept(region.grade, CODE_SCHEME, region.grade)
                )
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=result_uids(seed, f"sr-{region.name}")[1], identifier=region.name
                ),
                finding_type=codes.SCT.Lung,
                finding_sites=[sites[region.name]],
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=evaluations,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    comment = hd.sr.TextContentItem(
        name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
        value=DISCLAIMER,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    report[0].ContentSequence.append(comment)
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SR_DESCRIPTION,
    )
    buf = io.BytesIO()
    sr.save_as(buf)
    return buf.getvalue()


def sr_numbers(dataset) -> dict[str, dict[str, object]]:
    """{region: {concept meaning: value}} read back from an SR written here (its
    measurements and grades), for checks and tests."""
    result: dict[str, dict[str, object]] = {}

    def walk(items, region=None):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "CONTAINER" and name == "Measurement Group":
                ident = next(
                    (
                        c.TextValue
                        for c in item.ContentSequence
                        if c.ValueType == "TEXT"
                        and c.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"
                    ),
                    None,
                )
                walk(item.ContentSequence, ident)
                continue
            if region is not None and item.ValueType == "NUM":
                result.setdefault(region, {})[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif region is not None and item.ValueType == "CODE" and "CT" in name:
                result.setdefault(region, {})[name] = item.ConceptCodeSequence[0].CodeValue
            if "ContentSequence" in item:
                walk(item.ContentSequence, region)

    walk(dataset.ContentSequence)
    return result
