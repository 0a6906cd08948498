"""`manage.py dicom_listener`'s node (segmenter.dimse) against real peers: a pynetdicom
modality's C-ECHO and C-STORE, Orthanc routing a stored series to it, and the results sent
back to Orthanc by STOW-RS and by C-STORE."""

from __future__ import annotations

import io

import pydicom
import pytest
import requests
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from segmenter.dimse import Listener
from segmenter.ml.results.sr import sr_numbers
from segmenter.models import Analysis
from tests.pacs import PASSWORD, USER, kmader_series

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]

MODALITY = "CT_SCANNER"


@pytest.fixture
def listener(pacs, settings):
    settings.SEGMENTER_DICOM_PEERS = [f"{MODALITY}@127.0.0.1:104", f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"]
    settings.SEGMENTER_DICOM_QUIET_SECONDS = 0
    settings.SEGMENTER_DICOM_DESTINATION = "dicomweb"
    node = Listener(aet="EPOCHS42", host="127.0.0.1", port=0)
    node.start()
    yield node
    node.stop()


def _associate(node: Listener, aet: str = MODALITY, contexts=(Verification, CTImageStorage)):
    ae = AE(ae_title=aet)
    for context in contexts:
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", node.port, ae_title=node.aet)


def _send(node: Listener, files: list[bytes], aet: str = MODALITY) -> list[int]:
    assoc = _associate(node, aet)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(pydicom.dcmread(io.BytesIO(f))).Status for f in files]
    finally:
        assoc.release()


def test_a_peer_is_answered_and_a_stranger_is_turned_away(listener):
    assoc = _associate(listener)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert not _associate(listener, aet="STRANGER").is_established


def test_a_series_stored_by_a_modality_is_analysed_once_quiet_and_sent_to_the_pacs(
    listener, pacs, data_root
):
    files = kmader_series(data_root, 3, first=5)
    assert _send(listener, files) == [0, 0, 0]
    (analysis,) = listener.process_due(now=float("inf"))
    assert analysis.status == Analysis.Status.DONE and analysis.slices.count() == 3
    assert analysis.pacs_sent is not None and analysis.pacs_error == ""
    assert not any(listener.incoming.iterdir())  # the received files are gone
    source = pydicom.dcmread(io.BytesIO(files[0]))
    held = pacs.series_of_study(source.StudyInstanceUID)
    assert sorted(held) == ["SEG", "SR"]  # the modality sent the CT to us only
    assert held["SR"][0].PatientID == source.PatientID and held["SEG"][0].PatientName == source.PatientName
    assert sr_numbers(held["SR"][0])["lungs"]["Volume"] == pytest.approx(analysis.areas["lung_ml"], rel=0.01)


def test_orthanc_routes_a_stored_series_to_the_node_and_gets_the_results_by_c_store(
    listener, pacs, settings, data_root
):
    settings.SEGMENTER_DICOM_DESTINATION = f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"
    files = kmader_series(data_root, 2, first=8)
    pacs.store(files)
    source = pydicom.dcmread(io.BytesIO(files[0]))
    auth = (USER, PASSWORD)
    requests.put(
        f"{pacs.http}/modalities/epochs",
        json={"AET": listener.aet, "Host": "127.0.0.1", "Port": listener.port},
        auth=auth,
        timeout=10,
    ).raise_for_status()
    (series,) = requests.post(
        f"{pacs.http}/tools/lookup", data=source.SeriesInstanceUID, auth=auth, timeout=10
    ).json()
    routed = requests.post(
        f"{pacs.http}/modalities/epochs/store", json={"Resources": [series["ID"]]}, auth=auth, timeout=60
    )
    assert routed.ok, routed.text
    (analysis,) = listener.process_due(now=float("inf"))
    assert analysis.status == Analysis.Status.DONE and analysis.pacs_sent is not None, analysis.pacs_error
    held = pacs.series_of_study(source.StudyInstanceUID)
    assert sorted(held) == ["CT", "SEG", "SR"] and len(held["SEG"]) == 1


def test_a_series_that_is_not_ct_is_dropped_with_the_reason(listener, data_root, caplog):
    files = kmader_series(data_root, 1, first=11, modality="MR")
    assert _send(listener, files) == [0]
    assert listener.process_due(now=float("inf")) == [None]
    assert "refused" in caplog.text and not Analysis.objects.exists()
    assert not any(listener.incoming.iterdir())


def test_a_failed_send_is_recorded_on_the_done_analysis(listener, settings, data_root):
    settings.SEGMENTER_DICOM_DESTINATION = "NOBODY@127.0.0.1:9"  # nothing listens there
    files = kmader_series(data_root, 1, first=12)
    _send(listener, files)
    (analysis,) = listener.process_due(now=float("inf"))
    assert analysis.status == Analysis.Status.DONE and analysis.pacs_sent is None
    assert "could not be sent to NOBODY@127.0.0.1:9" in analysis.pacs_error


def test_a_series_over_the_limits_is_refused_as_it_arrives(listener, settings, data_root):
    settings.SEGMENTER_ZIP_MAX_MEMBERS = 1
    assert _send(listener, kmader_series(data_root, 2, first=13)) == [0x0000, 0xA700]
