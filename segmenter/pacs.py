"""The hospital's PACS as a source and a destination, over DICOMweb.

* ``dicomweb_client``: one DICOMweb client per server root, its requests session carrying
  the credentials from the settings (SEGMENTER_DICOMWEB_USER / _PASSWORD for basic auth,
  or SEGMENTER_DICOMWEB_TOKEN for a bearer token) and the timeout; no retries of its own
  (a retry is the user's, and works: nothing is half-done).
* ``address_read``: a study or series address read like an upload (``ml.io.dicomweb``:
  the same limits, budgets and CT checks as an archive of slices, then the networks' lung
  check), as a ParsedUpload.
* ``results_send``: a series' results back to the server it came from with STOW-RS: the
  DICOM SEG and the SR measurement report, both built before anything is sent and sent
  in one request, with the source's patient and study modules copied from the source's
  own header at that moment (never stored here) and UIDs derived from the analysis, so
  that sending again stores nothing twice.

Every failure is an ``uploads.UploadError`` (400) whose message says what went wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.utils.translation import gettext as _

from .ml.io.ctcheck import check_ct, check_lungs
from .ml.io.dicomweb import DicomWebAddress, DicomWebStudy, parse_address, read_dicomweb, server_errors
from .ml.io.imaging import UnreadableImage
from .ml.results import exports as ml_exports
from .ml.results import sr as ml_sr
from .ml.results.severity import Areas
from .models import Analysis
from .reasons import unreadable_reason
from .uploads import ParsedUpload, UploadError, archive_limits

log = logging.getLogger(__name__)


def configured() -> bool:
    """Whether a PACS is configured (SEGMENTER_DICOMWEB_URL)."""
    return bool(settings.SEGMENTER_DICOMWEB_URL)


def dicomweb_client(root: str):
    """A DICOMwebClient for the server at ``root``, with the configured credentials."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if settings.SEGMENTER_DICOMWEB_TOKEN:
        session.headers["Authorization"] = f"Bearer {settings.SEGMENTER_DICOMWEB_TOKEN}"
    elif settings.SEGMENTER_DICOMWEB_USER:
        session.auth = (settings.SEGMENTER_DICOMWEB_USER, settings.SEGMENTER_DICOMWEB_PASSWORD)
    client = DICOMwebClient(url=root, session=session, timeout=settings.SEGMENTER_DICOMWEB_TIMEOUT)
    client.set_http_retry_params(retry=False)
    return client


def address_parse(text: str, *, configured_only: bool) -> DicomWebAddress:
    """The study or series ``text`` names. With ``configured_only`` (the API, the web
    pages) it must lie on the configured server: no request goes anywhere else with its
    credentials. Raises UploadError."""
    address = parse_address(text)
    if address is None:
        raise UploadError(
            _(
                "This is not the address of a study or series on a DICOMweb server "
                "(…/studies/UID[/series/UID])."
            )
        )
    if configured_only and (not configured() or address.root.rstrip("/") != settings.SEGMENTER_DICOMWEB_URL):
        raise UploadError(_("Only studies on the configured PACS can be analysed here."))
    return address


def _refusal(exc: UnreadableImage) -> UploadError:
    log.info("PACS refusal: %s", exc)
    return UploadError(
        _("The PACS series could not be read: %(reason)s.") % {"reason": unreadable_reason(exc)}
    )


@dataclass
class PacsUpload(ParsedUpload):
    """A ParsedUpload read from a PACS, with the series read and why it was picked."""

    study: DicomWebStudy | None = None


def address_read(*, address: DicomWebAddress) -> PacsUpload:
    """Read and check the series at ``address`` (or the series picked from a study) like an
    archive of slices. Raises UploadError."""
    from .engine import get_segmenter

    client = dicomweb_client(address.root)
    try:
        study = read_dicomweb(client, address, archive_limits(), check=check_ct)
    except UnreadableImage as exc:
        raise _refusal(exc) from exc
    parsed = PacsUpload(kind=Analysis.Kind.STUDY, slices=study.slices, study=study)
    try:
        parsed.segmented = check_lungs(study.slices, get_segmenter(), study=True)
    except UnreadableImage as exc:
        parsed.close()
        raise _refusal(exc) from exc
    except BaseException:
        parsed.close()
        raise
    return parsed


def send_seed(series_uid: str, model_version: str, analysis_id=None) -> str:
    """What a result's UIDs are derived from: the analysis, or (the command line without
    a database) the series and the model, so that the same run sends the same objects."""
    return str(analysis_id) if analysis_id else f"{series_uid}/{settings.SEGMENTER_ENGINE}/{model_version}"


def results_build(
    *,
    labels: list[np.ndarray],
    areas: list[Areas],
    total: Areas,
    geometry: dict | None,
    model_version: str,
    seed: str,
    header,
) -> list:
    """The SEG (when the series has a frame of reference) and the SR of a series' results,
    as pydicom data sets, their patient and study modules copied from ``header`` (a
    source instance's own header). Raises UploadError."""
    import io

    import pydicom

    if geometry is None or geometry.get("kind") != "dicom":
        raise UploadError(_("These results cannot be sent: the series' geometry is not known."))
    patient_study = ml_exports.patient_study_of(header) if header is not None else None
    objects = []
    if geometry.get("seg"):
        objects.append(
            ml_exports.dicom_seg(labels, geometry, model_version, seed=seed, patient_study=patient_study)
        )
    objects.append(
        ml_sr.measurement_report(
            labels, areas, total, geometry, model_version, seed=seed, patient_study=patient_study
        )
    )
    return [pydicom.dcmread(io.BytesIO(data)) for data in objects]


def source_header(address: DicomWebAddress, geometry: dict | None):
    """The first source instance's header (no pixel data), fetched from the PACS now.
    Raises UploadError."""
    import pydicom

    if geometry is None or geometry.get("kind") != "dicom":
        raise UploadError(_("These results cannot be sent: the series' geometry is not known."))
    first = pydicom.Dataset.from_json(geometry["instances"][0])
    try:
        with server_errors(address):
            header = dicomweb_client(address.root).retrieve_instance_metadata(
                first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
            )
    except UnreadableImage as exc:
        raise _send_failed(exc) from exc
    header = {tag: element for tag, element in header.items() if "BulkDataURI" not in element}  # no pixels
    return pydicom.Dataset.from_json(header)


def stow(address: DicomWebAddress, datasets: list) -> list[str]:
    """Store ``datasets`` on the server at ``address`` in one STOW-RS request; the SOP
    Instance UIDs stored. Raises UploadError."""
    try:
        with server_errors(address):
            answer = dicomweb_client(address.root).store_instances(
                datasets, study_instance_uid=datasets[0].StudyInstanceUID
            )
    except UnreadableImage as exc:
        raise _send_failed(exc) from exc
    failed = list(getattr(answer, "FailedSOPSequence", []))
    if failed:
        raise UploadError(
            _("The PACS refused %(count)d of the results; send them again.") % {"count": len(failed)}
        )
    sent = [ds.SOPInstanceUID for ds in datasets]
    log.info("sent %s to %s", ", ".join(sent), address.root)
    return sent


def results_send(
    *,
    address: DicomWebAddress,
    labels: list[np.ndarray],
    areas: list[Areas],
    total: Areas,
    geometry: dict | None,
    model_version: str,
    seed: str,
) -> list[str]:
    """Store the SEG and SR of a series' results on the server it came from (``address``)
    with STOW-RS, the source's patient and study modules fetched from it now; the SOP
    Instance UIDs sent. Everything is built before anything is sent. Raises UploadError."""
    header = source_header(address, geometry)
    datasets = results_build(
        labels=labels,
        areas=areas,
        total=total,
        geometry=geometry,
        model_version=model_version,
        seed=seed,
        header=header,
    )
    return stow(address, datasets)


def _send_failed(exc: UnreadableImage) -> UploadError:
    log.info("PACS send failed: %s", exc)
    return UploadError(
        _(
            "The results could not be sent to the PACS: %(reason)s. Nothing was stored there that a "
            "second try would duplicate; send again."
        )
        % {"reason": unreadable_reason(exc)}
    )


# --- Analyses of PACS series (the API, the web pages, a worker) ------------------------------


def source_of(address: DicomWebAddress, study: DicomWebStudy) -> dict:
    """What an Analysis keeps of where its series came from (pacs_source): UIDs, no patient."""
    return {
        "root": address.root,
        "study": study.address.study,
        "series": study.address.series,
        "choice": study.choice,
    }


def source_read(analysis: Analysis) -> PacsUpload:
    """The series of a queued analysis of a PACS series, read again (by a worker)."""
    source = analysis.pacs_source
    return address_read(address=DicomWebAddress(source["root"], source["study"], source["series"]))


def _stored_results(analysis: Analysis) -> dict:
    from . import exports

    slices = list(analysis.slices.all())
    return {
        "labels": [exports.slice_labels(s) for s in slices],
        "areas": [Areas.from_dict(s.areas) for s in slices],
        "total": Areas.from_dict(analysis.areas),
        "geometry": exports.geometry_read(analysis=analysis),
        "model_version": exports.provenance_read(analysis=analysis).get("model", {}).get("version")
        or "unversioned",
        "seed": str(analysis.id),
    }


def _record(analysis: Analysis, error: str = "") -> None:
    from django.utils import timezone

    fields = {"pacs_error": error} if error else {"pacs_error": "", "pacs_sent": timezone.now()}
    Analysis.objects.filter(pk=analysis.pk).update(**fields)
    for name, value in fields.items():
        setattr(analysis, name, value)


def analysis_send_to(*, analysis: Analysis, destination: str, header) -> list[str]:
    """Send a done analysis' SEG and SR to ``destination`` ("dicomweb": the configured PACS
    by STOW-RS; "AET@host:port": by C-STORE), their patient and study modules from
    ``header``; record when, or why not. Raises UploadError."""
    from .dimse import Peer, cstore

    try:
        datasets = results_build(**_stored_results(analysis), header=header)
        if destination == "dicomweb":
            if not configured():
                raise UploadError(_("No PACS is configured to send to (SEGMENTER_DICOMWEB_URL)."))
            sent = stow(DicomWebAddress(settings.SEGMENTER_DICOMWEB_URL, "", None), datasets)
        else:
            try:
                cstore(Peer.parse(destination), datasets)
            except (OSError, ValueError) as exc:
                raise UploadError(
                    _("The results could not be sent to %(peer)s: %(reason)s.")
                    % {"peer": destination, "reason": exc}
                ) from exc
            sent = [ds.SOPInstanceUID for ds in datasets]
    except UploadError as exc:
        _record(analysis, str(exc))
        raise
    _record(analysis)
    return sent


def analysis_send(*, analysis: Analysis) -> list[str]:
    """Send a done analysis of a PACS series back to the PACS (results_send, from its
    stored label maps, areas and geometry; UIDs derived from its id), and record when, or
    why not. Raises UploadError."""
    if not analysis.pacs_source:
        raise UploadError(_("This analysis is not of a PACS series; there is nowhere to send it."))
    if analysis.status != Analysis.Status.DONE:
        raise UploadError(_("Only a finished analysis can be sent to the PACS."))
    source = analysis.pacs_source
    address = DicomWebAddress(source["root"], source["study"], source["series"])
    try:
        sent = results_send(address=address, **_stored_results(analysis))
    except UploadError as exc:
        _record(analysis, str(exc))
        raise
    _record(analysis)
    return sent


def send_if_asked(analysis: Analysis) -> None:
    """After an analysis of a PACS series is done: send it when asked to (pacs_send) or
    always (SEGMENTER_DICOMWEB_SEND_ALWAYS). Never raises: a failure is recorded on the
    analysis (pacs_error) and the send can be tried again."""
    if not analysis.pacs_source or not (analysis.pacs_send or settings.SEGMENTER_DICOMWEB_SEND_ALWAYS):
        return
    analysis.refresh_from_db()
    try:
        analysis_send(analysis=analysis)
    except UploadError:
        pass
    except Exception:  # noqa: BLE001 - the analysis is done; only the send failed
        log.exception("sending analysis %s to the PACS failed", analysis.pk)
        message = _("The results could not be sent to the PACS because of an internal error; send again.")
        Analysis.objects.filter(pk=analysis.pk).update(pacs_error=message)


# --- Searching the PACS (the page "From a PACS") -----------------------------------------------


def _text(item: dict, tag: str) -> str:
    value = (item.get(tag) or {}).get("Value") or [""]
    first = value[0]
    if isinstance(first, dict):  # a person name: {"Alphabetic": "Doe^John"}
        first = first.get("Alphabetic", "")
    return str(first)


def studies_search(
    *, patient_id: str = "", accession: str = "", date_from: str = "", date_to: str = ""
) -> list[dict]:
    """CT studies on the configured PACS (QIDO-RS) matching what is given (dates as
    YYYYMMDD), as the PACS returns them, at most 100. Raises UploadError."""
    filters = {"ModalitiesInStudy": "CT"}
    if patient_id:
        filters["PatientID"] = patient_id
    if accession:
        filters["AccessionNumber"] = accession
    if date_from or date_to:
        filters["StudyDate"] = f"{date_from}-{date_to}"
    address = DicomWebAddress(settings.SEGMENTER_DICOMWEB_URL, "", None)
    fields = [
        "PatientName",
        "PatientID",
        "StudyDate",
        "AccessionNumber",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "ModalitiesInStudy",
    ]
    try:
        with server_errors(address):
            found = dicomweb_client(address.root).search_for_studies(
                search_filters=filters, fields=fields, limit=100
            )
    except UnreadableImage as exc:
        raise _refusal(exc) from exc
    return [
        {
            "study": _text(item, "0020000D"),
            "patient_name": _text(item, "00100010").replace("^", " ").strip(),
            "patient_id": _text(item, "00100020"),
            "date": _text(item, "00080020"),
            "accession": _text(item, "00080050"),
            "description": _text(item, "00081030"),
        }
        for item in found
    ]


def series_list(*, study: str) -> list[dict]:
    """A study's series on the configured PACS (QIDO-RS) with their modality and number of
    instances (slices). Raises UploadError."""
    address = DicomWebAddress(settings.SEGMENTER_DICOMWEB_URL, study, None)
    try:
        with server_errors(address):
            found = dicomweb_client(address.root).search_for_series(
                study,
                fields=["SeriesDescription", "NumberOfSeriesRelatedInstances", "SeriesNumber", "Modality"],
            )
    except UnreadableImage as exc:
        raise _refusal(exc) from exc
    rows = [
        {
            "series": _text(item, "0020000E"),
            "number": _text(item, "00200011"),
            "modality": _text(item, "00080060"),
            "description": _text(item, "0008103E"),
            "slices": _text(item, "00201209"),
            "url": f"{address.root}/studies/{study}/series/{_text(item, '0020000E')}",
        }
        for item in found
    ]
    return sorted(rows, key=lambda r: (r["modality"] != "CT", int(r["number"] or 0)))
