"""Training augmentation on model-scale uint8 slices and their target-code maps.

One random affine warp per sample (any of the four 90-degree orientations, since the
sources are rotated differently; a mirror; a small rotation; a scale change; a shift)
takes a ``size`` x ``size`` crop, after intensity changes that mimic the different
windows and JPEG compression of the sources. Pixels that fall outside the source
become black in the image and ``T_IGNORE`` in the codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .data import T_IGNORE


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 15.0  # uniform in +-rotation_deg, on top of a random 90-degree turn
    scale_range: tuple[float, float] = (0.8, 1.25)  # log-uniform zoom
    contrast_range: tuple[float, float] = (0.8, 1.2)
    brightness: float = 20.0  # added grey levels, uniform in +-brightness
    gamma_range: tuple[float, float] = (0.75, 1.35)
    noise_prob: float = 0.3
    noise_sigma: float = 8.0
    blur_prob: float = 0.2
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (40, 95)
    # 8-bit sources were exported through windows nobody recorded: a random monotone
    # curve (knots at 0, 64, ..., 255 moved by +-curve_jitter grey levels) teaches the
    # networks that the window does not matter, only density relative to the slice.
    curve_prob: float = 0.5
    curve_jitter: float = 18.0
    # Sources with Hounsfield units are rendered through a random window around the
    # model's (constants.MODEL_WINDOW_*), wide enough to include the usual lung window.
    window_width_hu: tuple[float, float] = (1200.0, 1650.0)
    window_level_hu: tuple[float, float] = (-600.0, -350.0)


def random_window(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[float, float]:
    """(width, level) in HU for rendering a calibrated slice."""
    return float(rng.uniform(*cfg.window_width_hu)), float(rng.uniform(*cfg.window_level_hu))


def monotone_curve(rng: np.random.Generator, jitter: float) -> np.ndarray:
    """A random non-decreasing uint8 lookup table (256,) with 0 -> ~0 and 255 -> ~255."""
    knots_x = np.linspace(0.0, 255.0, 5)
    knots_y = np.clip(knots_x + rng.uniform(-jitter, jitter, knots_x.size), 0.0, 255.0)
    knots_y = np.maximum.accumulate(knots_y)
    return np.clip(np.rint(np.interp(np.arange(256), knots_x, knots_y)), 0, 255).astype(np.uint8)


def _intensity(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    if rng.random() < cfg.curve_prob:
        image = monotone_curve(rng, cfg.curve_jitter)[image]
    x = image.astype(np.float32) / 255.0
    gamma = float(np.exp(rng.uniform(np.log(cfg.gamma_range[0]), np.log(cfg.gamma_range[1]))))
    x = np.power(x, gamma)
    x = x * rng.uniform(*cfg.contrast_range) + rng.uniform(-cfg.brightness, cfg.brightness) / 255.0
    if rng.random() < cfg.blur_prob:
        x = cv2.GaussianBlur(x, (0, 0), sigmaX=float(rng.uniform(0.3, 1.0)))
    if rng.random() < cfg.noise_prob:
        x = x + rng.normal(0.0, rng.uniform(0.0, cfg.noise_sigma) / 255.0, x.shape).astype(np.float32)
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    if rng.random() < cfg.jpeg_prob:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out


def random_affine(
    shape: tuple[int, int], size: int, rng: np.random.Generator, cfg: AugmentConfig
) -> np.ndarray:
    """A 2x3 matrix mapping source (x, y) to a size x size crop."""
    h, w = shape
    angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg) + 90.0 * rng.integers(4))
    scale = float(np.exp(rng.uniform(np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1]))))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    c, s = np.cos(angle), np.sin(angle)
    linear = scale * np.array([[c, -s], [s, c]]) @ np.diag([flip, 1.0])
    # Choose the source point that lands in the crop's centre: anywhere that keeps the
    # crop mostly on the image, or the image centre (jittered) if the image is small.
    half = size / (2.0 * scale)
    cy = rng.uniform(min(half, h / 2), max(h - half, h / 2)) + rng.normal(0, 0.05 * h)
    cx = rng.uniform(min(half, w / 2), max(w - half, w / 2)) + rng.normal(0, 0.05 * w)
    offset = np.array([size / 2.0, size / 2.0]) - linear @ np.array([cx, cy])
    return np.hstack([linear, offset[:, None]]).astype(np.float64)


def augment(
    image: np.ndarray,
    codes: np.ndarray,
    size: int,
    rng: np.random.Generator,
    cfg: AugmentConfig = AugmentConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (h, w), uint8 (h, w)) -> (uint8 (size, size), uint8 (size, size))."""
    matrix = random_affine(image.shape, size, rng, cfg)
    image = _intensity(image, rng, cfg)
    out_image = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    out_codes = cv2.warpAffine(
        codes, matrix, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=T_IGNORE
    )
    return out_image, out_codes
