"""The input-domain rule (constants.MODEL_WINDOW_*): calibrated healthy lung rendered
through the model's window lands where unmarked lung lies in the MedSeg exports, well
below MedSeg's ground glass; the usual lung window puts it near the ground glass."""

import numpy as np
from PIL import Image

from segmenter.ml.io.imaging import read_slice, window
from segmenter.ml.training.data import kmader_to_hu


def lung_peak(grey: np.ndarray) -> int:
    """The grey level of the dark histogram peak (aerated lung), smoothed over 9 levels."""
    counts = np.convolve(np.bincount(grey.ravel(), minlength=256), np.ones(9) / 9, "same")
    return int(np.argmax(counts[:130]))


def test_healthy_hu_lung_sits_where_medseg_lung_does_not_where_its_ground_glass_does(data_root):
    folder = data_root / "medseg-covid"
    peaks, ggo = [], []
    for path in sorted((folder / "images").glob("*.jpg")):
        pixels = read_slice(path).pixels
        mask = np.asarray(Image.open(folder / "masks" / f"{path.stem}.png"))
        peaks.append(lung_peak(pixels))
        ggo.append(pixels[mask == 1])
    medseg_lung, medseg_ggo = np.median(peaks), np.median(np.concatenate(ggo))

    values = np.load(data_root / "kmader-lungs" / "images.npz")["images"][::5]
    lungs = np.load(data_root / "kmader-lungs" / "lung_masks.npz")["masks"][::5]
    model = [np.median(window(kmader_to_hu(v))[m]) for v, m in zip(values, lungs)]
    usual = [np.median(window(kmader_to_hu(v), 1500, -600)[m]) for v, m in zip(values, lungs)]

    assert abs(np.median(model) - medseg_lung) <= 10
    assert medseg_ggo - np.median(model) >= 35
    assert medseg_ggo - np.median(usual) <= 25  # the old rule: healthy lung near ground glass

