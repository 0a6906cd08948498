"""The engine benchmark's variants: how they are measured and judged against the bar."""

from __future__ import annotations

import numpy as np

from segmenter.ml.constants import NUM_CLASSES
from segmenter.ml.evaluation.engine_bench import measure_variants, variants_table
from segmenter.ml.evaluation.engine_variants import Variant, batched, one_by_one
from segmenter.ml.model.ensemble import Ensemble


class PixelRunner:
    """A stand-in network whose probabilities follow the input's grey level."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        bright = (images[:, 0] > 0).astype(np.float32)
        out = np.zeros((images.shape[0], NUM_CLASSES, *images.shape[2:]), np.float32)
        out[:, 2], out[:, 3] = bright, 1.0 - bright
        return out


def _slices() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for shape in [(256, 256), (200, 240), (256, 256)]:
        pixels = np.full(shape, 20, np.uint8)
        pixels[40:-40, 30:-30] = rng.integers(120, 255, (shape[0] - 80, shape[1] - 60))
        out.append(pixels)
    return out


def test_a_batch_through_the_networks_gives_the_labels_of_one_slice_at_a_time():
    ensemble = Ensemble({"a": PixelRunner(), "b": PixelRunner()}, scales={"a": 0.5, "b": 1.0}, parallel=True)
    slices = _slices()
    for got, want in zip(batched(ensemble, batch=2)(slices), one_by_one(ensemble)(slices)):
        np.testing.assert_array_equal(got, want)


def test_a_variant_clears_the_bar_only_when_faster_than_served_and_in_agreement():
    slices = [(f"{k}", p) for k, p in enumerate(_slices())]
    references = [np.full(p.shape, 3, np.uint8) for _, p in slices]

    def constant(value):
        return lambda batch: [np.full(p.shape, value, np.uint8) for p in batch]

    def slow(batch):
        import time

        time.sleep(0.02)
        return constant(3)(batch)

    rows = measure_variants(
        [
            Variant("served", slow, "", served=True),
            Variant("fast and right", constant(3), ""),
            Variant("fast and wrong", constant(2), ""),
        ],
        slices[0][1],
        slices,
        references,
        runs=3,
    )
    by_name = {r["variant"]: r for r in rows}
    assert by_name["served"]["clears_bar"] and by_name["served"]["ms_per_slice"] >= 20
    assert by_name["fast and right"]["clears_bar"] and by_name["fast and right"]["agreement"] == 1.0
    assert not by_name["fast and wrong"]["clears_bar"] and by_name["fast and wrong"]["agreement"] == 0.0
    table = variants_table(rows)
    assert "fast and wrong" in table and "ms/slice" in table
