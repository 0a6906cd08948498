"""Reading CT slices from files into the networks' 8-bit input domain.

Every reader returns ``CTSlice`` objects whose ``pixels`` are uint8 arrays of shape
(H, W), row 0 at the top of the image as it is displayed, in the model's window (see
``constants.MODEL_WINDOW_*``). How each kind of file gets there:

* 8-bit PNG / JPEG (grey, RGB, RGBA, palette): taken as already windowed; colour is
  converted to luma (ITU-R 601) after compositing any alpha onto black.
* 16-bit (or 32-bit) grey PNG / TIFF-like images: values are taken as uncalibrated CT
  numbers and calibrated with :func:`calibrate_uncalibrated_ct` (air peak -> -1000 HU,
  soft-tissue peak -> +40 HU), then windowed.
* DICOM (with or without the ``DICM`` preamble): the modality LUT (RescaleSlope and
  RescaleIntercept) gives Hounsfield units, which are windowed. Tags other than the
  pixel module are optional. Compressed transfer syntaxes decode when a pydicom
  decoder plugin is installed (requirements.txt installs pylibjpeg's) and otherwise
  fail with ``UnreadableImage``.

Everything that is wrong with a file is reported as ``UnreadableImage`` with a message
meant for the person who uploaded it, and a ``code`` and ``params`` from which the web
pages say the same in the reader's language.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..constants import AIR_HU, MODEL_WINDOW_LEVEL_HU, MODEL_WINDOW_WIDTH_HU
from ..errors import UnreadableImage
from .geometry import VolumeGeometry, dicom_reference
from .headers import DicomPixelModule, PixelBudget, check_dicom_pixel_module, codestream_size

log = logging.getLogger(__name__)

#: Largest slice accepted, in pixels (width x height). Anything larger is refused before
#: its pixels are decoded, which also defeats decompression bombs.
MAX_SLICE_PIXELS = 4096 * 4096
#: Smallest side accepted, in pixels.
MIN_SLICE_SIDE = 16
#: Decoded pixels one upload may hold (all its slices together): 300 million, a
#: 1,000-slice study of 512 x 512 slices and some. ``PixelBudget`` charges each image
#: before it is decoded; the application reads the limit from its settings.
MAX_DECODED_PIXELS = 300_000_000
#: Soft tissue, the second calibration point for uncalibrated CT numbers.
SOFT_TISSUE_HU = 40.0

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class CTSlice:
    """One axial slice in the networks' input domain.

    pixels: uint8 (H, W), lung-windowed grey, row 0 at the top of the displayed image.
    name: the file name it came from (or ``name[k]`` for one frame of several).
    calibrated: True when the source carried Hounsfield units (DICOM, NIfTI).
    pixel_spacing_mm: (row spacing, column spacing) in millimetres, when known.
    slice_thickness_mm: the distance the slice covers along the body axis, when known.
    position_mm: where the slice lies along the body axis, when known (for ordering).
    instance_number: DICOM InstanceNumber, when present (for ordering).
    colour_share: the share of pixels that were coloured in the file (see ctcheck); 0
    for grey files.
    hu: int16 (H, W), the slice's Hounsfield units rounded to integers, when the source
    carried them (``calibrated``); None otherwise. The viewer windows it in the browser.
    volume: the geometry of the NIfTI volume it was taken from, and volume_index its index
    along that volume's slice axis (see geometry.VolumeGeometry).
    dicom: the referencing attributes of its single-frame DICOM instance, DICOM JSON
    (geometry.dicom_reference).
    """

    pixels: np.ndarray
    name: str
    calibrated: bool = False
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: float | None = None
    position_mm: float | None = None
    instance_number: int | None = None
    colour_share: float = 0.0
    hu: np.ndarray | None = None
    volume: VolumeGeometry | None = None
    volume_index: int | None = None
    dicom: dict | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]

    def without_pixels(self) -> CTSlice:
        """This slice's header alone: names, spacing, position and geometry, with empty
        pixels (shape (0, 0)) and no HU. What a study keeps of each slice once it has
        been processed (for its provenance and exports), so that memory stays flat."""
        return replace(self, pixels=np.zeros((0, 0), np.uint8), hu=None)


class LazySlices(Sequence[CTSlice]):
    """A study's slices in order, each made when it is asked for (``_slice(position)``),
    so that only the slices someone holds are in memory. Indexing and iteration give
    fresh CTSlices; ``close()`` (or leaving it as a context manager) lets go of what they
    are read from. ``headers`` are the slices without their pixels
    (``CTSlice.without_pixels``), for what needs only names, positions and ``calibrated``."""

    headers: Sequence[CTSlice]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Let go of what the slices are read from."""

    def __len__(self) -> int:
        return len(self.headers)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[k] for k in range(*position.indices(len(self)))]
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"slice {position} of a {len(self)}-slice study")
        return self._slice(position)

    def _slice(self, position: int) -> CTSlice:
        raise NotImplementedError


# --- Intensity mapping ---------------------------------------------------------------


def window(
    hu: np.ndarray,
    width: float = MODEL_WINDOW_WIDTH_HU,
    level: float = MODEL_WINDOW_LEVEL_HU,
) -> np.ndarray:
    """Map Hounsfield units (any shape, any numeric dtype) to uint8 through a window.

    HU ``level - width/2`` becomes 0 and ``level + width/2`` becomes 255; values outside
    are clipped.
    """
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def hu_int16(hu: np.ndarray) -> np.ndarray:
    """Hounsfield units (any shape, any numeric dtype) -> int16, rounded and clipped to
    the int16 range (CT numbers lie within -1024..+3071, or a few times that for metal)."""
    values = np.nan_to_num(np.asarray(hu, dtype=np.float32), nan=AIR_HU, posinf=32767, neginf=-32768)
    return np.clip(np.rint(values), -32768, 32767).astype(np.int16)


def _smoothed_histogram(values: np.ndarray, lo: float, hi: float, bins: int = 160):
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    smooth = np.convolve(counts.astype(np.float64), np.ones(5) / 5.0, mode="same")
    return smooth, (edges[:-1] + edges[1:]) / 2.0


def _otsu_threshold(values: np.ndarray) -> float:
    counts, centres = _smoothed_histogram(values, float(values.min()), float(values.max()) + 1e-3, 256)
    weights = counts / counts.sum()
    w0 = np.cumsum(weights)
    m0 = np.cumsum(weights * centres)
    between = (m0[-1] * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def _drop_padding(values: np.ndarray) -> np.ndarray:
    """Values without a low cluster cut off by an empty gap (out-of-field padding).

    The gap must span at least 8 % of the value range and the cluster below it hold less
    than half of the pixels.
    """
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return values
    counts, edges = np.histogram(values, bins=400, range=(lo, hi))
    empty = counts == 0
    best_end, best_len, run = -1, 0, 0
    for k, e in enumerate(empty):
        run = run + 1 if e else 0
        if run > best_len:
            best_len, best_end = run, k
    if best_len < 0.08 * len(counts):
        return values
    cut = float(edges[best_end + 1])
    below = np.count_nonzero(values < cut)
    return values[values >= cut] if below < 0.5 * values.size else values


def calibrate_uncalibrated_ct(values: np.ndarray) -> np.ndarray:
    """Turn uncalibrated CT numbers into approximate Hounsfield units, float32 (H, W).

    Some sources store CT numbers with an unknown offset and slope (16-bit PNG exports;
    the kmader set, whose air sits near -787 and whose out-of-field circle near -2500).
    Two landmarks fix the line:

    * out-of-field padding, a cluster of values below an empty gap, is set aside;
    * soft tissue (+40 HU): the histogram peak above an Otsu threshold, i.e. the body;
    * air (-1000 HU): the lowest clear histogram peak between 1300 and 500 units below
      the soft-tissue peak, which skips out-of-field padding far below and is outside
      air on a whole slice (aerated lung, about -850 HU, on a slice cropped to the chest).

    When the landmarks cannot be found (a flat image) the 1st and 99th percentiles are
    stretched over the lung window instead.
    """
    v = np.asarray(values, dtype=np.float32)
    flat = v.ravel()
    p1, p99 = (float(x) for x in np.percentile(flat, [1, 99]))
    lo_window = MODEL_WINDOW_LEVEL_HU - MODEL_WINDOW_WIDTH_HU / 2
    if p99 - p1 <= 0:
        return np.full(v.shape, lo_window, dtype=np.float32)
    sample = _drop_padding(flat[:: max(1, flat.size // 65536)])
    threshold = _otsu_threshold(sample)
    body = sample[sample > threshold]
    tissue = air = None
    if body.size:
        counts, centres = _smoothed_histogram(body, threshold, float(body.max()) + 1e-3)
        tissue = float(centres[int(np.argmax(counts))])
        low = sample[(sample >= tissue - 1300) & (sample <= tissue - 500)]
        if low.size > 0.01 * sample.size:
            counts, centres = _smoothed_histogram(low, tissue - 1300, tissue - 500)
            peaks = np.flatnonzero(
                (counts >= 0.25 * counts.max())
                & (counts >= np.roll(counts, 1))
                & (counts >= np.roll(counts, -1))
            )
            air = float(centres[peaks[0]]) if peaks.size else None
    if tissue is None or air is None:
        return (lo_window + (v - p1) * (MODEL_WINDOW_WIDTH_HU / (p99 - p1))).astype(np.float32)
    slope = (SOFT_TISSUE_HU - AIR_HU) / (tissue - air)
    return (AIR_HU + (v - air) * slope).astype(np.float32)


def to_grey_u8(array: np.ndarray) -> np.ndarray:
    """Reduce an 8-bit grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4) array to grey uint8.

    Alpha is composited onto black; colour becomes ITU-R 601 luma.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        return a.astype(np.uint8, copy=False)
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise UnreadableImage(
            f"unsupported pixel layout {a.shape}", code="unsupported_layout", params={"shape": str(a.shape)}
        )
    a = a.astype(np.float32)
    if a.shape[2] in (2, 4):
        alpha = a[..., -1:] / 255.0
        a = a[..., :-1] * alpha
    if a.shape[2] == 1:
        grey = a[..., 0]
    else:
        grey = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


# --- Readers --------------------------------------------------------------------------


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_SLICE_PIXELS:
        raise UnreadableImage(
            f"image is {width}x{height} pixels; the limit is {MAX_SLICE_PIXELS:,} pixels",
            code="image_too_large",
            params={"width": width, "height": height, "limit": MAX_SLICE_PIXELS},
        )
    if min(width, height) < MIN_SLICE_SIDE:
        raise UnreadableImage(
            f"image is {width}x{height} pixels; each side must be at least {MIN_SLICE_SIDE}",
            code="image_too_small",
            params={"width": width, "height": height, "min_side": MIN_SLICE_SIDE},
        )


def _read_raster(data: bytes, name: str, budget: PixelBudget) -> CTSlice:
    """PNG or JPEG bytes -> CTSlice (see module docstring for the intensity rules)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            _check_size(*image.size)
            budget.charge(image.size[0] * image.size[1], name)
            image.load()
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage("image is too large to decode safely", code="decompression_bomb") from exc
    except UnidentifiedImageError as exc:
        raise UnreadableImage("not a PNG or JPEG image", code="not_an_image") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise UnreadableImage(
            f"the image file is damaged or incomplete ({exc})", code="damaged_image", params={"detail": str(exc)}
        ) from exc
    if getattr(image, "n_frames", 1) > 1:
        log.info("%s has %d frames; reading the first", name, image.n_frames)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        return CTSlice(pixels=window(calibrate_uncalibrated_ct(values)), name=name)
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise UnreadableImage(f"unsupported image mode {mode}", code="unsupported_mode", params={"mode": mode})
    array = np.asarray(image)
    colour = colour_share(array) if array.ndim == 3 and array.shape[2] >= 3 else 0.0
    return CTSlice(pixels=to_grey_u8(array), name=name, colour_share=colour)


def colour_share(rgb: np.ndarray, chroma_min: int = 24) -> float:
    """Share of pixels of a uint8 (H, W, 3+) picture whose chroma (max - min of R, G, B)
    exceeds ``chroma_min``; see ctcheck."""
    a = np.asarray(rgb)[..., :3].astype(np.int16)
    chroma = a.max(axis=2) - a.min(axis=2)
    return float(np.count_nonzero(chroma > chroma_min)) / chroma.size


#: Geometry outside these bounds is nonsense (and overflows areas and volumes): ignored.
#: the Deflated Explicit VR Little Endian transfer syntax, and the most its data set may inflate to
DEFLATED_SYNTAX = b"1.2.840.10008.1.2.1.99"
MAX_DEFLATED_BYTES = 256 * 1024 * 1024
MAX_SPACING_MM = 100.0
MAX_POSITION_MM = 1e6


def _float_or_none(value, bound: float = MAX_POSITION_MM) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if np.isfinite(out) and abs(out) <= bound else None


def _dicom_position(ds) -> float | None:
    """Position along the body axis in mm: ImagePositionPatient projected on the normal."""
    ipp = getattr(ds, "ImagePositionPatient", None)
    iop = getattr(ds, "ImageOrientationPatient", None)
    try:
        if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
            row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
            return _float_or_none(np.dot(np.cross(row, col), np.asarray(ipp, float)))
    except (TypeError, ValueError):
        pass
    return _float_or_none(getattr(ds, "SliceLocation", None))


def _read_dicom(data: bytes, name: str, force: bool, budget: PixelBudget, decode: bool = True) -> list[CTSlice]:
    """DICOM bytes -> one CTSlice per frame, in Hounsfield units through the model's window.

    pydicom parses element values lazily, so a damaged value (NumberOfFrames "ab",
    RescaleSlope "x", an undecodable VR) surfaces only when it is read: any such error
    while the slices are built is reported as a damaged file.
    """
    try:
        return _dicom_slices(data, name, force, budget, decode)
    except UnreadableImage:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # ValueError, KeyError, NotImplementedError (an unknown VR), pydicom's own...
        detail = exc.__class__.__name__
        raise UnreadableImage(
            f"the DICOM file is damaged ({detail})", code="damaged_dicom", params={"detail": detail}
        ) from exc


def _check_deflated(data: bytes) -> None:
    """Refuse a deflated data set that would inflate past MAX_DEFLATED_BYTES: pydicom
    inflates it whole and unbounded, so it is inflated here first, in bounded chunks
    that are counted and dropped."""
    if DEFLATED_SYNTAX not in data[:4096] or data[128:132] != b"DICM":
        return
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = io.BytesIO(data)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception:
        return  # pydicom's own read reports the damage
    if meta.get("TransferSyntaxUID") != DEFLATED_SYNTAX.decode():
        return
    inflater, total, tail = zlib.decompressobj(-zlib.MAX_WBITS), 0, data[stream.tell():]
    try:
        while tail and not inflater.eof:
            total += len(inflater.decompress(tail, 1 << 22))
            tail = inflater.unconsumed_tail
            if total > MAX_DEFLATED_BYTES:
                raise UnreadableImage(
                    f"the deflated DICOM data set inflates to more than {MAX_DEFLATED_BYTES:,} bytes",
                    code="dicom_too_large",
                )
    except zlib.error as exc:
        raise UnreadableImage("the DICOM file is damaged (deflate)", code="damaged_dicom",
                              params={"detail": "deflate"}) from exc


def _check_codestreams(ds, rows: int, cols: int) -> None:
    """A compressed frame's own header (JPEG, JPEG-LS, JPEG 2000) must declare the image
    the DICOM header does, or the decoder would allocate what the codestream says."""
    from pydicom.encaps import generate_fragments

    try:
        fragments = generate_fragments(ds.PixelData)
        for fragment in fragments:
            size = codestream_size(bytes(fragment[:4096]))
            if size is not None and size != (cols, rows):
                raise UnreadableImage(
                    f"a compressed frame declares {size[0]}x{size[1]} pixels but the DICOM header says "
                    f"{cols}x{rows}",
                    code="dicom_frame_mismatch",
                    params={"width": size[0], "height": size[1], "columns": cols, "rows": rows},
                )
    except UnreadableImage:
        raise
    except Exception as exc:  # a damaged encapsulation
        detail = exc.__class__.__name__
        raise UnreadableImage(
            f"the DICOM pixel data could not be decoded ({detail})", code="dicom_undecodable", params={"detail": detail}
        ) from exc


def _dicom_pixels(ds, syntax, frames: int) -> np.ndarray:
    """The data set's decoded pixel frames, (frames, rows, cols[, samples])."""
    try:
        raw = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise UnreadableImage(
            f"this DICOM is compressed with {syntax.name}, which cannot be decoded here",
            code="dicom_compression_unsupported",
            params={"syntax": syntax.name},
        ) from exc
    except Exception as exc:
        detail = exc.__class__.__name__
        raise UnreadableImage(
            f"the DICOM pixel data could not be decoded ({detail})",
            code="dicom_undecodable",
            params={"detail": detail},
        ) from exc
    raw = np.asarray(raw)
    return raw[None] if frames == 1 else raw


def _pixel_module(ds, syntax, rows: int, cols: int, frames: int, samples: int) -> DicomPixelModule:
    """The Image Pixel module as the header declares it (headers.check_dicom_pixel_module)."""
    photometric = ds.get("PhotometricInterpretation")
    planar = ds.get("PlanarConfiguration")
    return DicomPixelModule(
        rows=rows, columns=cols, frames=frames, samples=samples,
        bits_allocated=int(getattr(ds, "BitsAllocated", 0) or 0),
        bits_stored=int(getattr(ds, "BitsStored", 0) or 0),
        pixel_representation=int(getattr(ds, "PixelRepresentation", 0) or 0),
        photometric=str(photometric).strip() if photometric else None,
        planar=int(planar) if planar is not None and str(planar).strip() != "" else None,
        data_bytes=None if syntax.is_encapsulated else len(ds.PixelData),
    )


def _native_hu(ds, syntax, rows: int, cols: int, frames: int, samples: int) -> bool:
    """Whether this data set's pixels are grey Hounsfield units stored uncompressed, in
    a layout pydicom decodes by reshaping the bytes (so decoding cannot fail), and with
    a plain rescale (read here, so a damaged one is reported now): its slices can be
    checked from the header alone (``ctcheck`` trusts HU from a CT header)."""
    if syntax.is_encapsulated or "PixelData" not in ds or samples != 1 or "ModalityLUTSequence" in ds:
        return False
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds
    if not (has_rescale or str(getattr(ds, "Modality", "CT") or "CT") == "CT"):
        return False
    for keyword, default in (("RescaleSlope", 1), ("RescaleIntercept", 0)):
        float(getattr(ds, keyword, default) or default)  # raises here on a damaged value
    bits = int(getattr(ds, "BitsAllocated", 0) or 0)
    stored = int(getattr(ds, "BitsStored", 0) or 0)
    if bits not in (8, 16, 32) or not 0 < stored <= bits or int(getattr(ds, "PixelRepresentation", 0) or 0) not in (0, 1):
        return False
    if str(getattr(ds, "PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2"):
        return False
    expected = rows * cols * frames * bits // 8
    return len(ds.PixelData) in (expected, expected + 1)  # + 1: padded to an even length


def _dicom_slices(data: bytes, name: str, force: bool, budget: PixelBudget, decode: bool = True) -> list[CTSlice]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    _check_deflated(data)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as exc:
        raise UnreadableImage("not a DICOM file", code="not_dicom") from exc
    except Exception as exc:  # pydicom raises many types on damaged files
        detail = exc.__class__.__name__
        raise UnreadableImage(
            f"the DICOM file is damaged ({detail})", code="damaged_dicom", params={"detail": detail}
        ) from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise UnreadableImage("the DICOM file holds no image (no Pixel Data element)", code="dicom_without_image")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    _check_size(cols, rows)
    if frames < 1:
        raise UnreadableImage(f"the DICOM file declares {frames} frames", code="damaged_dicom",
                              params={"detail": "NumberOfFrames"})
    budget.charge(rows * cols * frames, name)
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        # No file meta information: name the syntax the data set was read with.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian
            if implicit
            else pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        )
    syntax = ds.file_meta.TransferSyntaxUID
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if "PixelData" in ds:
        check_dicom_pixel_module(_pixel_module(ds, syntax, rows, cols, frames, samples))
    if syntax.is_encapsulated and "PixelData" in ds:
        _check_codestreams(ds, rows, cols)
    if not decode and _native_hu(ds, syntax, rows, cols, frames, samples):
        raw = [None] * frames  # headers only: each slice is decoded when it is reached
    else:
        raw = _dicom_pixels(ds, syntax, frames)
        expected = (frames, rows, cols) if samples == 1 else (frames, rows, cols, samples)
        if raw.shape != expected:  # whatever the header let through, never a surprise shape
            raise UnreadableImage(
                f"the DICOM pixel data could not be decoded (shape {raw.shape}, header {expected})",
                code="dicom_undecodable", params={"detail": "shape"},
            )
    spacing = getattr(ds, "PixelSpacing", None)
    spacing_mm = None
    if spacing is not None and len(spacing) == 2:
        sr, sc = _float_or_none(spacing[0], MAX_SPACING_MM), _float_or_none(spacing[1], MAX_SPACING_MM)
        if sr and sc and sr > 0 and sc > 0:
            spacing_mm = (sr, sc)
    thickness = _float_or_none(getattr(ds, "SliceThickness", None), MAX_SPACING_MM)
    thickness = thickness if thickness and thickness > 0 else None
    instance = getattr(ds, "InstanceNumber", None)
    instance = int(instance) if isinstance(instance, (int, float)) or str(instance).isdigit() else None
    position = _dicom_position(ds)
    reference = dicom_reference(ds) if frames == 1 and samples == 1 else None

    slices = []
    for k, frame in enumerate(raw):
        if frame is None:  # the header alone (see _native_hu)
            pixels, calibrated, colour, hu16 = np.zeros((0, 0), np.uint8), True, 0.0, None
        elif samples > 1:
            rgb = frame
            if str(getattr(ds, "PhotometricInterpretation", "RGB")).startswith("YBR"):
                from pydicom.pixels import convert_color_space

                rgb = convert_color_space(frame, ds.PhotometricInterpretation, "RGB")
            rgb8 = _to_u8(rgb)
            pixels, calibrated, colour, hu16 = to_grey_u8(rgb8), False, colour_share(rgb8), None
        else:
            colour, hu16 = 0.0, None
            has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds
            modality = str(getattr(ds, "Modality", "CT") or "CT")
            if has_rescale or modality == "CT":
                hu = apply_modality_lut(frame, ds).astype(np.float32)
                pixels, calibrated, hu16 = window(hu), True, hu_int16(hu)
            else:
                values = frame.astype(np.float32)
                if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
                    values = values.max() - values
                pixels, calibrated, hu16 = window(calibrate_uncalibrated_ct(values)), False, None
        slices.append(
            CTSlice(
                pixels=pixels,
                name=name if frames == 1 else f"{name}[{k + 1}]",
                calibrated=calibrated,
                pixel_spacing_mm=spacing_mm,
                slice_thickness_mm=thickness,
                position_mm=position if frames == 1 else None,
                instance_number=instance if frames == 1 else k + 1,
                colour_share=colour,
                hu=hu16,
                dicom=reference,
            )
        )
    return slices


def _to_u8(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def sniff_kind(head: bytes, name: str) -> str | None:
    """'png', 'jpeg', 'dicom' or None, from a file's first 132 bytes and its name."""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if name.lower().endswith(DICOM_SUFFIXES):
        return "dicom"
    return None


def read_slices(
    source: bytes | str | Path, name: str | None = None, budget: PixelBudget | None = None, *, decode: bool = True
) -> list[CTSlice]:
    """Read a PNG, JPEG or DICOM file (bytes or a path) into one or more CTSlices.

    A multi-frame DICOM gives one slice per frame; everything else gives one slice.
    Every image is charged to ``budget`` (a fresh one of MAX_DECODED_PIXELS if None)
    before it is decoded. With ``decode=False``, a DICOM of uncompressed grey Hounsfield
    units whose pixel data has the declared size gives its slices' headers only
    (``CTSlice.without_pixels``: what the CT check needs of it), everything else is
    decoded. Raises UnreadableImage with a user-facing message for anything it cannot
    read.
    """
    budget = budget if budget is not None else PixelBudget(MAX_DECODED_PIXELS)
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.name
        data = path.read_bytes()
    else:
        data = bytes(source)
    name = name or "slice"
    if not data:
        raise UnreadableImage("the file is empty", code="empty")
    kind = sniff_kind(data[:132], name)
    if kind in ("png", "jpeg"):
        return [_read_raster(data, name, budget)]
    if kind == "dicom":
        return _read_dicom(data, name, force=data[128:132] != b"DICM", budget=budget, decode=decode)
    raise UnreadableImage("unsupported file type: expected a PNG, JPEG or DICOM slice", code="unsupported_type")


def read_slice(source: bytes | str | Path, name: str | None = None) -> CTSlice:
    """Read exactly one slice; a multi-frame file is refused with a clear message."""
    slices = read_slices(source, name)
    if len(slices) != 1:
        raise UnreadableImage(
            f"the file holds {len(slices)} frames; upload it as a study instead",
            code="several_frames",
            params={"frames": len(slices)},
        )
    return slices[0]
