"""Reading a CT series from a DICOMweb server (a PACS), as a study is read from an archive.

An address ``http(s)://HOST/PREFIX/studies/<StudyInstanceUID>[/series/<SeriesInstanceUID>]``
names a study or one of its series on the server whose DICOMweb root is
``http(s)://HOST/PREFIX`` (``parse_address``). Reading it (``read_dicomweb``):

1. Without a series, the study's series are searched (QIDO-RS, CT only) and one is
   picked (``pick_series``): axial (ImageOrientationPatient's normal within 25° of the
   body axis), not a localizer, the most instances; ties go to the lower SeriesNumber.
   The choice and why it was made come back as ``DicomWebStudy.choice``.
2. The series' metadata (WADO-RS, no pixel data) are read first and checked as an
   archive's listing is: every instance CT, the instance count within the member and
   slice limits, each instance's declared pixel bytes (Rows × Columns × BitsAllocated /
   8 × frames) within the per-file limit and all of them within the total.
3. The instances are then retrieved one after the other in a single streamed WADO-RS
   request (``DICOMwebClient.iter_series``) and each goes through the same collector as
   an archive member (``archive._Collector``): its size against the per-file and total
   limits, the decoded-pixel budget, the CT check, then an unnamed temporary file; the
   study is ordered and decoded again slice by slice as it is segmented
   (``archive.StudySlices``).

Every failure is an ``UnreadableImage`` whose code says what went wrong in words a user
can act on: the server cannot be reached, is too slow, refuses the credentials, does not
know the UID, answers with an error, holds no CT series or one that is too large, or the
transfer broke off. The client (its session carries the credentials) is the caller's.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .archive import ArchiveLimits, StudySlices, _Collector, _Spool
from .imaging import CTSlice, UnreadableImage

log = logging.getLogger(__name__)

#: A DICOMweb address of a study or a series: the server's root, then the UIDs.
ADDRESS = re.compile(
    r"^(?P<root>https?://[^\s?#]+?)/studies/(?P<study>[0-9][0-9.]{0,63})"
    r"(?:/series/(?P<series>[0-9][0-9.]{0,63}))?/?$"
)
#: A series is axial when its slices' normal is within this angle of the body axis.
AXIAL_WITHIN_DEGREES = 25.0
#: ImageType values of the series that are never analysed.
SKIPPED_IMAGE_TYPES = {"LOCALIZER", "SCOUT"}


@dataclass(frozen=True)
class DicomWebAddress:
    """A study (series None) or a series on the DICOMweb server at ``root``."""

    root: str
    study: str
    series: str | None = None

    @property
    def url(self) -> str:
        tail = f"/series/{self.series}" if self.series else ""
        return f"{self.root}/studies/{self.study}{tail}"


def parse_address(text: str) -> DicomWebAddress | None:
    """The study or series a DICOMweb address names, or None when ``text`` is not one.
    User names and passwords in the address are refused (None): credentials come from
    the environment only."""
    match = ADDRESS.match(text.strip())
    if match is None or "@" in match["root"].split("/", 3)[2]:
        return None
    return DicomWebAddress(match["root"], match["study"], match["series"])


@dataclass
class DicomWebStudy:
    """What was read: the series' address, the slices (StudySlices, to be closed) and
    why that series was analysed when a study was given."""

    address: DicomWebAddress
    slices: StudySlices
    choice: str
    instances: int


# --- Errors ---------------------------------------------------------------------------------


@contextmanager
def server_errors(address: DicomWebAddress, done: Callable[[], int] = lambda: 0) -> Iterator[None]:
    """Turn what the HTTP client raises into an UnreadableImage that says what happened;
    ``done`` tells how many instances had arrived (for a transfer cut short)."""
    import requests

    server = address.root
    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise UnreadableImage(
                f"the PACS at {server} refused the credentials (HTTP {status})",
                code="pacs_refused",
                params={"server": server, "status": status},
            ) from exc
        if status == 404:
            raise UnreadableImage(
                f"the PACS at {server} does not know {address.url}",
                code="pacs_not_found",
                params={"server": server},
            ) from exc
        raise UnreadableImage(
            f"the PACS at {server} answered with an error (HTTP {status})",
            code="pacs_error",
            params={"server": server, "status": status},
        ) from exc
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
        raise _cut(server, done()) from exc
    except requests.Timeout as exc:
        raise UnreadableImage(
            f"the PACS at {server} did not answer in time", code="pacs_timeout", params={"server": server}
        ) from exc
    except requests.ConnectionError as exc:
        if done():
            raise _cut(server, done()) from exc
        raise UnreadableImage(
            f"the PACS at {server} cannot be reached", code="pacs_unreachable", params={"server": server}
        ) from exc
    except requests.RequestException as exc:
        raise UnreadableImage(
            f"the PACS at {server} answered with an error ({exc})",
            code="pacs_error",
            params={"server": server, "status": 0},
        ) from exc


def _cut(server: str, count: int) -> UnreadableImage:
    return UnreadableImage(
        f"the transfer from the PACS at {server} broke off after {count} instances; try again",
        code="pacs_transfer_cut",
        params={"server": server, "count": count},
    )


# --- Picking a series -----------------------------------------------------------------------


def _first(item: dict, tag: str, default=None):
    value = (item.get(tag) or {}).get("Value")
    return value[0] if value else default


def _values(item: dict, tag: str) -> list:
    return list((item.get(tag) or {}).get("Value") or [])


MODALITY, SERIES_UID, SERIES_NUMBER, SERIES_DESCRIPTION = "00080060", "0020000E", "00200011", "0008103E"
INSTANCES_IN_SERIES, IMAGE_TYPE, ORIENTATION = "00201209", "00080008", "00200037"
ROWS, COLUMNS, BITS_ALLOCATED, FRAMES, SOP_INSTANCE = (
    "00280010",
    "00280011",
    "00280100",
    "00280008",
    "00080018",
)


def is_axial(orientation: list) -> bool:
    """Whether ImageOrientationPatient's slice normal lies within AXIAL_WITHIN_DEGREES of
    the body axis."""
    try:
        values = np.asarray(orientation, dtype=float)
    except (TypeError, ValueError):
        return False
    if values.shape != (6,):
        return False
    normal = np.cross(values[:3], values[3:])
    size = np.linalg.norm(normal)
    return bool(size > 0 and abs(normal[2]) / size >= np.cos(np.radians(AXIAL_WITHIN_DEGREES)))


def describe_series(item: dict) -> str:
    """'series 3 "Lung 1.0" (1.2.3…)' from a QIDO-RS series result."""
    number, text = _first(item, SERIES_NUMBER), _first(item, SERIES_DESCRIPTION)
    parts = [f"series {number}" if number is not None else "series"]
    if text:
        parts.append(f'"{text}"')
    parts.append(f"({_first(item, SERIES_UID)})")
    return " ".join(parts)


def pick_series(client, address: DicomWebAddress) -> tuple[str, str]:
    """(SeriesInstanceUID, why) of the study's series to analyse: see the module's
    docstring. Raises UnreadableImage when the study has no axial CT series."""
    with server_errors(address):
        found = client.search_for_series(address.study, search_filters={"Modality": "CT"})
        found = [s for s in found if (_first(s, MODALITY) or "CT") == "CT"]
        if not found:
            if not client.search_for_studies(search_filters={"StudyInstanceUID": address.study}):
                raise UnreadableImage(
                    f"the PACS at {address.root} does not know {address.url}",
                    code="pacs_not_found",
                    params={"server": address.root},
                )
            raise UnreadableImage(
                f"the study {address.study} holds no CT series", code="pacs_no_ct_series", params={}
            )
        candidates = []
        for item in found:
            uid = _first(item, SERIES_UID)
            one = client.search_for_instances(address.study, uid, limit=1)
            if not one:
                continue
            meta = client.retrieve_instance_metadata(address.study, uid, _first(one[0], SOP_INSTANCE))
            kinds = {str(v).upper() for v in _values(meta, IMAGE_TYPE)}
            if kinds & SKIPPED_IMAGE_TYPES or not is_axial(_values(meta, ORIENTATION)):
                continue
            count = int(_first(item, INSTANCES_IN_SERIES, 0) or 0)
            candidates.append((-count, int(_first(item, SERIES_NUMBER, 0) or 0), uid, item))
    if not candidates:
        raise UnreadableImage(
            f"the study {address.study} holds no axial CT series", code="pacs_no_ct_series", params={}
        )
    candidates.sort(key=lambda c: c[:2])
    count, _, uid, item = candidates[0]
    why = f"{describe_series(item)}: axial CT"
    if len(found) > 1:
        why += (
            f", the most slices ({-count}) of the study's {len(found)} CT series ({len(candidates)} axial)"
        )
    return uid, why


# --- Reading a series -----------------------------------------------------------------------


def check_metadata(metadata: list[dict], limits: ArchiveLimits, address: DicomWebAddress) -> None:
    """Refuse a series from its metadata before any pixel is retrieved: not CT, more
    instances than the limits allow, an instance or the whole series over the size limits."""
    if not metadata:
        raise UnreadableImage(
            f"the PACS at {address.root} holds no instances of {address.url}",
            code="pacs_not_found",
            params={"server": address.root},
        )
    modalities = sorted({str(_first(m, MODALITY, "")) for m in metadata})
    if modalities != ["CT"]:
        raise UnreadableImage(
            f"the series is {'/'.join(m or '?' for m in modalities)}, not CT",
            code="pacs_not_ct",
            params={"modality": "/".join(m or "?" for m in modalities)},
        )
    count = len(metadata)
    if count > min(limits.max_members, limits.max_slices):
        raise UnreadableImage(
            f"the series holds {count} instances; the limit is {min(limits.max_members, limits.max_slices)}",
            code="pacs_too_many_instances",
            params={"count": count, "limit": min(limits.max_members, limits.max_slices)},
        )
    total = 0
    for item in metadata:
        size = (
            int(_first(item, ROWS, 0) or 0)
            * int(_first(item, COLUMNS, 0) or 0)
            * int(_first(item, BITS_ALLOCATED, 16) or 16)
            // 8
            * int(_first(item, FRAMES, 1) or 1)
        )
        if size > limits.max_member_bytes:
            raise UnreadableImage(
                f"an instance of the series holds {size:,} bytes of pixels; "
                f"the limit is {limits.max_member_bytes:,}",
                code="pacs_instance_too_large",
                params={"size_bytes": size, "limit_bytes": limits.max_member_bytes},
            )
        total += size
    if total > limits.max_total_bytes:
        raise UnreadableImage(
            f"the series holds {total:,} bytes of pixels; the limit is {limits.max_total_bytes:,}",
            code="pacs_series_too_large",
            params={"size_bytes": total, "limit_bytes": limits.max_total_bytes},
        )


def instance_bytes(dataset) -> bytes:
    """A retrieved data set as the bytes of its Part 10 file."""
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, dataset, enforce_file_format=False)
    return buf.getvalue()


def _instances(client, address: DicomWebAddress, done: Callable[[], int]):
    """The series' instances as they arrive; a part cut short ends as pacs_transfer_cut."""
    from pydicom.errors import InvalidDicomError

    instances = client.iter_series(address.study, address.series)
    while True:
        try:
            dataset = next(instances)
        except StopIteration:
            return
        except (EOFError, ValueError, InvalidDicomError) as exc:  # a part cut short, or no DICOM at all
            raise _cut(address.root, done()) from exc
        yield dataset


def read_dicomweb(
    client,
    address: DicomWebAddress,
    limits: ArchiveLimits = ArchiveLimits(),
    check: Callable[[CTSlice], None] | None = None,
) -> DicomWebStudy:
    """The CT series at ``address`` (a study's picked series, see ``pick_series``), read,
    limited and checked like an archive's slices; see the module's docstring. Raises
    UnreadableImage."""
    choice = ""
    if address.series is None:
        series, choice = pick_series(client, address)
        address = DicomWebAddress(address.root, address.study, series)
    with server_errors(address):
        metadata = client.retrieve_series_metadata(address.study, address.series)
    check_metadata(metadata, limits, address)
    spool = _Spool()
    collector = _Collector(
        limits,
        check,
        spool,
        lambda: UnreadableImage(
            f"the series holds more than {limits.max_slices} slices",
            code="pacs_too_many_instances",
            params={"count": len(metadata), "limit": limits.max_slices},
        ),
    )
    received, total = 0, 0
    try:
        with server_errors(address, lambda: received):
            for dataset in _instances(client, address, lambda: received):
                data = instance_bytes(dataset)
                del dataset
                total += len(data)
                if len(data) > limits.max_member_bytes or total > limits.max_total_bytes:
                    raise UnreadableImage(
                        "the series is larger than its metadata said "
                        f"(over {limits.max_total_bytes:,} bytes)",
                        code="pacs_series_too_large",
                        params={"size_bytes": total, "limit_bytes": limits.max_total_bytes},
                    )
                received += 1
                collector.add(data, f"{received:04d}.dcm")
        if received < len(metadata):
            raise _cut(address.root, received)
    except BaseException:
        spool.close()
        raise
    log.info("read %d instances of %s", received, address.url)
    return DicomWebStudy(address=address, slices=collector.study(), choice=choice, instances=received)
