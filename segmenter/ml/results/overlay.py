"""Colour layers over a slice, the label map as a PNG file, and Hounsfield units packed
into an 8-bit RGB PNG for the browser's window/level.

Layers are the three lung classes; each has a visibility, an RGB colour and an opacity.
A rendered overlay is uint8 (H, W, 3): for each visible layer's pixels,
out = (1 - opacity) * base + opacity * colour, where base is the grey slice, or black
in the "mask only" view.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from isal import isal_zlib
from PIL import Image

from ..constants import CONSOLIDATION, GGO, OTHER_LUNG

#: A slice's Hounsfield units travel to the browser as an 8-bit RGB PNG (a canvas reads
#: 8 bits a channel exactly, a 16-bit PNG only rounded): v = HU + HU_PNG_OFFSET, a uint16,
#: is split into R = v >> 8 (high byte) and G = v & 255 (low byte); B is 0. So HU -1000 is
#: v 31768, (R, G) (124, 24). static/segmenter/viewer.js unpacks it the same way.
HU_PNG_OFFSET = 32768

LAYERS = {"ggo": GGO, "consolidation": CONSOLIDATION, "other_lung": OTHER_LUNG}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class LayerStyle:
    visible: bool
    colour: str  # "#rrggbb"
    opacity: float  # 0..1

    @property
    def rgb(self) -> tuple[int, int, int]:
        h = self.colour.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


DEFAULT_STYLES: dict[str, LayerStyle] = {
    "ggo": LayerStyle(True, "#ffd60a", 0.55),
    "consolidation": LayerStyle(True, "#ff3b30", 0.65),
    "other_lung": LayerStyle(True, "#2f80ed", 0.25),
}


def parse_colour(text: str) -> str:
    """'#rrggbb' or 'rrggbb' -> '#rrggbb' (lower case); ValueError otherwise."""
    m = _HEX.match(text.strip())
    if not m:
        raise ValueError(f"colour {text!r} is not #rrggbb")
    return "#" + m.group(1).lower()


def parse_style(text: str, default: LayerStyle) -> LayerStyle:
    """'rrggbb,opacity,visible' (each part optional, e.g. 'ff0000,0.4,1') -> LayerStyle."""
    parts = [p.strip() for p in text.split(",")]
    colour, opacity, visible = default.colour, default.opacity, default.visible
    if parts and parts[0]:
        colour = parse_colour(parts[0])
    if len(parts) > 1 and parts[1]:
        opacity = float(parts[1])
        if not 0.0 <= opacity <= 1.0:
            raise ValueError(f"opacity {opacity} is not within 0..1")
    if len(parts) > 2 and parts[2]:
        if parts[2] not in ("0", "1"):
            raise ValueError(f"visibility {parts[2]!r} is not 0 or 1")
        visible = parts[2] == "1"
    return LayerStyle(visible, colour, opacity)


def render_overlay(
    pixels: np.ndarray,
    labels: np.ndarray,
    styles: dict[str, LayerStyle] | None = None,
    mask_only: bool = False,
) -> np.ndarray:
    """uint8 (H, W) slice + uint8 (H, W) label map -> uint8 (H, W, 3) RGB overlay.

    A layer's colour at a pixel depends only on the pixel's grey value, so each visible
    layer is a 256-entry lookup table (the blend above, made once) applied with OpenCV
    and copied in under the layer's mask: ~1.4 ms for 512 x 512 (blending the float
    image: ~12 ms), exactly the formula's values, and without holding the GIL, so that
    it runs beside the networks on the slice writer's thread.
    """
    if pixels.shape != labels.shape:
        raise ValueError(f"slice {pixels.shape} and labels {labels.shape} differ in shape")
    if pixels.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"expected uint8 slice and labels, got {pixels.dtype} and {labels.dtype}")
    styles = {**DEFAULT_STYLES, **(styles or {})}
    grey = np.zeros((256, 1), np.float32) if mask_only else np.arange(256, dtype=np.float32)[:, None]
    rgb = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_GRAY2RGB)
    out = np.zeros_like(rgb) if mask_only else rgb.copy()
    labels = np.ascontiguousarray(labels)
    for name, cls in LAYERS.items():
        style = styles[name]
        if not style.visible or style.opacity <= 0:
            continue
        mask = cv2.compare(labels, cls, cv2.CMP_EQ)
        if not cv2.countNonZero(mask):
            continue
        colour = np.asarray(style.rgb, np.float32)[None, :]
        table = (1.0 - style.opacity) * grey + style.opacity * colour  # (256, 3)
        table = np.clip(np.rint(table), 0, 255).astype(np.uint8)[:, None, :]
        cv2.copyTo(cv2.LUT(rgb, table), mask, out)
    return out


#: The deflate level of every PNG written (ISA-L's levels run 0-3).
PNG_LEVEL = 2
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 (H, W) grey or (H, W, 3) RGB -> PNG file bytes, encoded for speed.

    The PNG is one IHDR, one IDAT and IEND (the format of the PNG specification, 8 bits
    a channel, no interlace); its image data are deflated by Intel's ISA-L (python-isal),
    about 3.5 x faster than zlib at level 1 and without holding the GIL. Grey rows use
    the "sub" filter, colour rows none. Timed on 512 x 512 slices: grey 0.8 ms / 166 kB,
    packed HU 2.0 ms / 307 kB, overlay 2.0 ms / 334 kB (OpenCV at zlib level 1 with the
    best filter for each: 1.9 / 6 / 6 ms).
    """
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"could not encode a {array.dtype} {array.shape} array as PNG")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"could not encode an empty {array.shape} array as PNG")
    rows = array.reshape(height, -1)
    raw = np.empty((height, rows.shape[1] + 1), np.uint8)  # each row: its filter byte, then its bytes
    if array.ndim == 2:
        raw[:, 0] = 1  # sub: each byte minus the one to its left, modulo 256
        raw[:, 1] = rows[:, 0]
        np.subtract(rows[:, 1:], rows[:, :-1], out=raw[:, 2:])
        colour_type = 0
    else:
        raw[:, 0] = 0
        raw[:, 1:] = rows
        colour_type = 2
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join((
        _PNG_SIGNATURE,
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", isal_zlib.compress(raw, PNG_LEVEL)),
        _png_chunk(b"IEND", b""),
    ))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join((struct.pack(">I", len(data)), kind, data, struct.pack(">I", isal_zlib.crc32(data, isal_zlib.crc32(kind)))))


def read_label_png(data: bytes) -> np.ndarray:
    """A label map PNG written by ``png_bytes`` -> uint8 (H, W)."""
    image = Image.open(io.BytesIO(data))
    if image.mode != "L":
        raise ValueError(f"label map PNG has mode {image.mode}, expected L")
    return np.asarray(image)


def pack_hu(hu: np.ndarray) -> np.ndarray:
    """int16 (H, W) Hounsfield units -> uint8 (H, W, 3) RGB: R high byte, G low byte of
    HU + HU_PNG_OFFSET, B 0 (see HU_PNG_OFFSET). Exact for every int16 value."""
    if hu.dtype != np.int16 or hu.ndim != 2:
        raise ValueError(f"expected int16 (H, W) Hounsfield units, got {hu.dtype} {hu.shape}")
    v = hu.astype(np.int32) + HU_PNG_OFFSET
    out = np.zeros(hu.shape + (3,), np.uint8)
    out[..., 0] = v >> 8
    out[..., 1] = v & 0xFF
    return out


def hu_png_bytes(hu: np.ndarray) -> bytes:
    """int16 (H, W) Hounsfield units -> the PNG file of pack_hu(hu)."""
    return png_bytes(pack_hu(hu))


def unpack_hu(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from ``pack_hu`` (or its PNG) -> int16 (H, W) Hounsfield units."""
    v = (rgb[..., 0].astype(np.int32) << 8) | rgb[..., 1].astype(np.int32)
    return (v - HU_PNG_OFFSET).astype(np.int16)


def thumbnail(rgb: np.ndarray, side: int) -> np.ndarray:
    """An RGB (H, W, 3) image shrunk to fit a ``side`` x ``side`` box (aspect kept, area
    averaging; never enlarged)."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
