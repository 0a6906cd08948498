"""The app as a DICOM node (DIMSE, pynetdicom): series arrive by C-STORE, results go back.

``Listener`` accepts associations from the peers listed in SEGMENTER_DICOM_PEERS (AE title
and host both must match), answers C-ECHO, and writes each C-STORE'd instance straight to
its series' folder under a private incoming folder (never held in memory; a series UID
that is not a UID is refused). ``process_due`` (run every second by ``manage.py
dicom_listener``) takes each series that has been complete — nothing new for
SEGMENTER_DICOM_QUIET_SECONDS — and:

1. reads the folder as an upload's folder is read (``uploads.folder_read``: the same
   limits, budget and CT checks), stores it as an analysis and processes it;
2. sends the DICOM SEG and SR to SEGMENTER_DICOM_DESTINATION: ``dicomweb`` (the
   configured PACS, STOW-RS) or ``AET@host:port`` (C-STORE), with the patient and study
   modules copied from the received instances' own headers;
3. removes the folder. A series that cannot be read is logged with the reason and
   removed; a failed analysis keeps its reason; a failed send is recorded on the
   analysis (``pacs_error``) and can be sent again through the API.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

UID = re.compile(r"^[0-9][0-9.]{0,63}$")
#: C-STORE statuses (PS3.4 B.2.3): success, refused (out of resources), cannot understand.
SUCCESS, REFUSED, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
NOT_AUTHORISED = 0x0124  # "Not authorized" (PS3.7 C.5.x), for a peer not in the list


@dataclass(frozen=True)
class Peer:
    """A DICOM node: AE title, host and port (``AET@host:port``)."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        match = re.match(r"^([^@\s]{1,16})@([^:\s]+):(\d{1,5})$", text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not AET@host:port")
        return cls(match[1], match[2], int(match[3]))


def peers() -> list[Peer]:
    return [Peer.parse(p) for p in settings.SEGMENTER_DICOM_PEERS]


def _address(host: str) -> str:
    """A peer's host as the IP address an association comes from."""
    import socket

    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


class Listener:
    """A C-ECHO / C-STORE SCP writing into ``incoming`` (a private folder of its own)."""

    def __init__(self, *, aet: str | None = None, host: str | None = None, port: int | None = None) -> None:
        self.aet = aet or settings.SEGMENTER_DICOM_AE_TITLE
        self.host = host or settings.SEGMENTER_DICOM_HOST
        self.port = settings.SEGMENTER_DICOM_PORT if port is None else port
        self.peers = peers()
        self._addresses = {p: _address(p.host) for p in self.peers}
        self.incoming = Path(tempfile.mkdtemp(prefix="42epochs-dicom-"))
        self._arrived: dict[str, float] = {}  # series folder -> last arrival (monotonic)
        self._lock = threading.Lock()
        self._server = None

    # --- The DIMSE side (pynetdicom's threads) ---

    def _allowed(self, event) -> bool:
        requestor = event.assoc.requestor
        aet = (
            requestor.ae_title.strip()
            if isinstance(requestor.ae_title, str)
            else requestor.ae_title.decode().strip()
        )
        return any(p.aet == aet and self._addresses[p] == requestor.address for p in self.peers)

    def _on_echo(self, event) -> int:
        return SUCCESS if self._allowed(event) else NOT_AUTHORISED

    def _on_store(self, event) -> int:
        if not self._allowed(event):
            log.warning("C-STORE from %s refused: not a configured peer", event.assoc.requestor.address)
            return NOT_AUTHORISED
        try:
            ds = event.dataset
            series, instance = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        except Exception:  # noqa: BLE001 - any undecodable data set
            return CANNOT_UNDERSTAND
        if not (UID.match(series) and UID.match(instance)):
            return CANNOT_UNDERSTAND
        folder = self.incoming / series
        folder.mkdir(exist_ok=True)
        data = event.encoded_dataset()  # the Part 10 file as received
        limit = settings.SEGMENTER_ZIP_MAX_MEMBER_MB * 1024 * 1024
        if len(data) > limit or sum(1 for _ in folder.iterdir()) >= settings.SEGMENTER_ZIP_MAX_MEMBERS:
            log.warning("C-STORE refused: series %s is over the limits of an upload", series)
            return REFUSED  # the folder is read with an archive's limits anyway; never fill the disk
        try:
            with open(folder / f"{instance}.dcm", "wb") as fh:
                fh.write(data)
        except OSError:
            log.exception("could not write a received instance")
            return REFUSED
        with self._lock:
            self._arrived[series] = time.monotonic()
        return SUCCESS

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.require_calling_aet = [p.aet for p in self.peers]
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        log.info(
            "DICOM listener %s on %s:%d; peers %s",
            self.aet,
            self.host,
            self.port,
            ", ".join(f"{p.aet}@{p.host}" for p in self.peers) or "none",
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        shutil.rmtree(self.incoming, ignore_errors=True)

    # --- Complete series (the command's loop) ---

    def due(self, now: float | None = None) -> list[str]:
        """The series quiet for SEGMENTER_DICOM_QUIET_SECONDS, taken off the list."""
        now = time.monotonic() if now is None else now
        with self._lock:
            ready = [
                s for s, t in self._arrived.items() if now - t >= settings.SEGMENTER_DICOM_QUIET_SECONDS
            ]
            for series in ready:
                del self._arrived[series]
        return ready

    def process_due(self, now: float | None = None) -> list:
        """Analyse and send every complete series; the analyses made (None for a series
        that could not be read)."""
        return [series_process(self.incoming / series) for series in self.due(now)]


def series_process(folder: Path):
    """Read, analyse and send one received series, then remove its folder; the Analysis
    (None when the series could not be read)."""
    from . import pacs, processing, uploads
    from .models import Analysis

    try:
        modalities = _modalities(folder)
        if modalities != {"CT"}:
            log.warning(
                "received series %s refused: it is %s, not CT", folder.name, "/".join(sorted(modalities))
            )
            return None
        try:
            parsed = uploads.folder_read(folder)
        except uploads.UploadError as exc:
            log.warning("received series %s refused: %s", folder.name, exc)
            return None
        try:
            analysis = Analysis.objects.create(
                kind=parsed.kind,
                source_name=f"dimse-{folder.name}",
                slices_total=len(parsed.slices),
                pacs_send=True,
            )
            processing.analysis_process(analysis_id=analysis.id, parsed=parsed)
        finally:
            parsed.close()
        analysis.refresh_from_db()
        if analysis.status == Analysis.Status.DONE:
            header = _first_header(folder)
            try:
                pacs.analysis_send_to(
                    analysis=analysis, destination=settings.SEGMENTER_DICOM_DESTINATION, header=header
                )
            except uploads.UploadError as exc:
                log.warning("results of %s not sent: %s", analysis.pk, exc)
            analysis.refresh_from_db()
        return analysis
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _modalities(folder: Path) -> set[str]:
    import pydicom

    found = set()
    for path in folder.glob("*.dcm"):
        try:
            found.add(
                str(
                    pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get(
                        "Modality", ""
                    )
                )
            )
        except Exception:  # noqa: BLE001 - an unreadable file: folder_read says why
            found.add("?")
    return found


def _first_header(folder: Path):
    import pydicom

    for path in sorted(folder.glob("*.dcm")):
        return pydicom.dcmread(path, stop_before_pixels=True)
    return None


def cstore(peer: Peer, datasets: list, *, aet: str | None = None) -> None:
    """Send ``datasets`` to ``peer`` by C-STORE on one association; raises OSError with
    the reason when the association or any store fails."""
    from pynetdicom import AE

    ae = AE(ae_title=aet or settings.SEGMENTER_DICOM_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.SEGMENTER_DICOMWEB_TIMEOUT
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
    if not assoc.is_established:
        raise OSError(f"{peer.aet}@{peer.host}:{peer.port} refused the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise OSError(
                    f"{peer.aet} answered C-STORE with status {code if code is None else hex(code)}"
                )
    finally:
        assoc.release()
