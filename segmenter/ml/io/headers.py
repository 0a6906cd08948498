"""Image sizes read from file headers, before anything is decoded, and the decoded-pixel budget.

A small file can declare a huge image: a 170 KB JPEG 2000 codestream that says
40000 x 40000, a PNG of a few kilobytes that inflates to 4096 x 4096, a gzipped NIfTI
that unpacks to gigabytes. Every reader asks this module what a file *says* it holds
(``png_size``, ``jpeg_size``, ``j2k_size``; ``codestream_size`` for any of them) and
charges it to a ``PixelBudget`` before it decodes anything, so that memory is bounded
by the limits, not by what an upload claims.

Sizes are (width, height) in pixels; a function returns None when the bytes are not of
its kind and raises UnreadableImage when they are but the header is damaged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import UnreadableImage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
J2K_MAGIC = b"\xff\x4f\xff\x51"  # SOC then SIZ: a raw JPEG 2000 codestream
JP2_MAGIC = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # the JP2 file format's signature box
#: JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic),
#: and JPEG-LS's SOF55; each holds precision, height, width.
SOF_MARKERS = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7])
#: markers without a length field
STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xDA)])


def _damaged(kind: str, what: str) -> UnreadableImage:
    return UnreadableImage(
        f"the {kind} header is damaged ({what})", code="damaged_header", params={"kind": kind, "detail": what}
    )


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk."""
    if not data.startswith(PNG_MAGIC):
        return None
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise _damaged("PNG", "no IHDR chunk")
    return struct.unpack(">II", data[16:24])


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or JPEG-LS start-of-frame segment."""
    if not data.startswith(b"\xff\xd8"):
        return None
    k, n = 2, len(data)
    while k + 4 <= n:
        if data[k] != 0xFF:
            raise _damaged("JPEG", f"no marker at byte {k}")
        marker = data[k + 1]
        if marker == 0xFF:  # fill byte
            k += 1
            continue
        if marker in STANDALONE_MARKERS:
            k += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[k + 2 : k + 4])
        if marker in SOF_MARKERS:
            if k + 9 > n:
                break
            height, width = struct.unpack(">HH", data[k + 5 : k + 9])
            if height == 0:  # the height would come later, in a DNL segment
                raise _damaged("JPEG", "the frame declares no height")
            return width, height
        if length < 2:
            raise _damaged("JPEG", f"segment length {length}")
        k += 2 + length
    raise _damaged("JPEG", "no frame header")


def j2k_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 codestream's SIZ segment (raw or inside a JP2 file)."""
    if data.startswith(JP2_MAGIC):
        start = data.find(J2K_MAGIC)  # the contiguous codestream box holds it
        if start < 0:
            raise _damaged("JPEG 2000", "no codestream")
        data = data[start:]
    if not data.startswith(J2K_MAGIC):
        return None
    if len(data) < 4 + 2 + 2 + 16:
        raise _damaged("JPEG 2000", "SIZ segment cut short")
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
    if xo >= xsiz or yo >= ysiz:
        raise _damaged("JPEG 2000", "image offset beyond its size")
    return xsiz - xo, ysiz - yo


def codestream_size(data: bytes) -> tuple[int, int] | None:
    """The size a PNG, JPEG, JPEG-LS or JPEG 2000 stream declares; None for anything else."""
    for reader in (png_size, jpeg_size, j2k_size):
        size = reader(data)
        if size is not None:
            return size
    return None


@dataclass
class PixelBudget:
    """The pixels one upload may decode, charged before each image is decoded.

    ``limit`` bounds the decoded pixels of a whole study (every slice of a zip, folder,
    multi-frame DICOM or volume together); ``used`` grows with each charge.
    """

    limit: int
    used: int = field(default=0)

    def charge(self, pixels: int, what: str) -> None:
        if self.used + pixels > self.limit:
            raise UnreadableImage(
                f"{what} would take the upload past its decoding budget of {self.limit / 1e6:,.0f} million "
                f"pixels (by {(self.used + pixels - self.limit) / 1e6:,.1f} million); send fewer or smaller slices",
                code="pixel_budget",
                params={"what": what, "limit_mpixels": round(self.limit / 1e6),
                        "over_mpixels": round((self.used + pixels - self.limit) / 1e6, 1)},
            )
        self.used += pixels


#: The grey photometric interpretations a CT slice comes in, and the colour ones read as
#: pictures (then refused by the CT check); PALETTE COLOR's values are indices into a
#: colour table, not intensities, so it is refused here.
GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
#: The bits per pixel a DICOM image may be stored in here (BitsAllocated). 1 is a binary
#: mask (a SEG or an overlay), not a CT slice; any other value pydicom cannot decode.
DICOM_BITS_ALLOCATED = (8, 16, 32)


@dataclass(frozen=True)
class DicomPixelModule:
    """What a DICOM data set's Image Pixel module declares, as read from its header.

    ``photometric`` is None when the element is missing (pydicom then decides), ``planar``
    None when PlanarConfiguration is missing; ``data_bytes`` is the length of the native
    (not encapsulated) Pixel Data, None for a compressed one.
    """

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str | None
    planar: int | None
    data_bytes: int | None

    def expected_bytes(self) -> int:
        """The native Pixel Data length the header implies (before padding to even)."""
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples  # 4:2:2 keeps 2 of 3
        bits = self.rows * self.columns * self.frames * samples * self.bits_allocated
        return -(-bits // 8)


def check_dicom_pixel_module(module: DicomPixelModule) -> None:
    """Refuse, before anything is decoded, a DICOM image whose header pydicom cannot
    decode or would decode into something else than the image it declares: bits per
    pixel other than 8, 16 or 32 (BitsAllocated 1 would be read as 16 frames of 0/1
    bits), more stored bits than allocated, a PixelRepresentation other than 0 or 1,
    samples per pixel other than 1 (grey) or 3 (colour) or not matching the photometric
    interpretation, a palette image, a colour image without a valid PlanarConfiguration,
    and native pixel data whose length is not what the header declares (pydicom would
    take the extra bytes as more frames). Raises UnreadableImage."""
    m = module
    if m.bits_allocated not in DICOM_BITS_ALLOCATED:
        raise UnreadableImage(
            f"the DICOM image has {m.bits_allocated} bits per pixel (BitsAllocated); 8, 16 and 32 are read",
            code="dicom_bits_allocated", params={"bits": m.bits_allocated},
        )
    if not 0 < m.bits_stored <= m.bits_allocated:
        raise UnreadableImage(
            f"the DICOM header declares {m.bits_stored} stored bits in {m.bits_allocated} allocated "
            "(BitsStored, BitsAllocated)",
            code="dicom_bits_stored", params={"stored": m.bits_stored, "allocated": m.bits_allocated},
        )
    if m.pixel_representation not in (0, 1):
        raise UnreadableImage(
            f"the DICOM header's PixelRepresentation is {m.pixel_representation}; it must be 0 or 1",
            code="dicom_pixel_representation", params={"value": m.pixel_representation},
        )
    if m.photometric == "PALETTE COLOR":
        raise UnreadableImage("the DICOM image is a palette colour picture, not a CT slice", code="dicom_palette")
    known = {1: GREY_PHOTOMETRICS, 3: COLOUR_PHOTOMETRICS}.get(m.samples, ())
    if not known or (m.photometric is not None and m.photometric not in known):
        raise UnreadableImage(
            f"the DICOM header declares {m.samples} samples per pixel with the photometric interpretation "
            f"{m.photometric or 'missing'}; a slice has 1 (MONOCHROME1, MONOCHROME2) or 3 (RGB, YBR)",
            code="dicom_samples", params={"samples": m.samples, "photometric": m.photometric or "-"},
        )
    if m.samples == 3 and m.planar not in (0, 1):
        raise UnreadableImage(
            "the DICOM colour image has no valid PlanarConfiguration (0 or 1)", code="dicom_planar",
        )
    if m.data_bytes is not None and m.data_bytes not in (m.expected_bytes(), m.expected_bytes() + 1):
        raise UnreadableImage(
            f"the DICOM pixel data hold {m.data_bytes} bytes but the header declares {m.expected_bytes()} "
            f"({m.columns}x{m.rows}, {m.frames} frame(s), {m.samples} sample(s) of {m.bits_allocated} bits)",
            code="dicom_pixel_data_length", params={"actual": m.data_bytes, "expected": m.expected_bytes()},
        )
