"""The study pipeline every front end runs: each slice segmented once, graded, handed to the
sink in order; progress reported; the study graded from the summed areas; nothing kept."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from segmenter.ml.io.imaging import CTSlice
from segmenter.ml.pipeline import Remembered, SliceAnalysis, Tee, run_study
from segmenter.ml.results.severity import assess, measure
from tests.stubs import StandInSegmenter, stand_in_labels

SIDE = 96


def _slice(k: int) -> CTSlice:
    """A synthetic chest-like slice: tissue with two dark lungs whose width grows with k."""
    pixels = np.full((SIDE, SIDE), 230, np.uint8)
    pixels[:4] = pixels[-4:] = 10  # air around the body
    pixels[20:76, 14 : 30 + k] = 90
    pixels[20:76, 60 : 76 + k] = 90
    return CTSlice(pixels=pixels, name=f"s{k}.png", pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=2.0)


class CountingSegmenter(StandInSegmenter):
    def __init__(self) -> None:
        self.calls = 0

    def segment(self, pixels, spacing_mm=None):
        self.calls += 1
        return super().segment(pixels, spacing_mm)


class ListSink:
    def __init__(self) -> None:
        self.got: list[tuple[int, SliceAnalysis]] = []

    def add(self, index: int, result: SliceAnalysis) -> None:
        self.got.append((index, result))


def test_each_slice_is_segmented_once_and_reaches_the_sink_in_order():
    slices = [_slice(k) for k in range(5)]
    segmenter, sink = CountingSegmenter(), ListSink()
    summary = run_study(slices, segmenter, sink)
    assert segmenter.calls == 5 and summary.slices == 5
    assert [index for index, _ in sink.got] == [1, 2, 3, 4, 5]
    assert [r.source.name for _, r in sink.got] == [s.name for s in slices]
    for (_, result), ct in zip(sink.got, slices):
        assert np.array_equal(result.labels, stand_in_labels(ct.pixels))
        assert result.areas == measure(result.labels, (0.7, 0.7), 2.0)
        assert result.severity == assess(result.areas)


def test_progress_is_reported_after_each_slice_with_the_total_when_known():
    calls = []
    run_study(
        [_slice(k) for k in range(3)], StandInSegmenter(), ListSink(), lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    run_study(
        (_slice(k) for k in range(2)), StandInSegmenter(), ListSink(), lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, None), (2, None)]  # a generator does not know its length


def test_the_study_is_graded_from_the_summed_areas():
    sink = ListSink()
    summary = run_study([_slice(k) for k in range(4)], StandInSegmenter(), sink)
    total = sink.got[0][1].areas
    for _, result in sink.got[1:]:
        total = total + result.areas
    assert summary.areas.ggo == total.ggo > 0 and summary.areas.lung == total.lung > 0
    assert summary.areas.lung_ml == pytest.approx(total.lung_ml)
    assert summary.severity == assess(total)
    # Not the mean of the slices' grades: the lesion share of the summed lungs.
    assert summary.severity.lesion_percent == pytest.approx(100 * total.lesion / total.lung)


def test_an_empty_study_grades_as_no_lung():
    summary = run_study([], StandInSegmenter(), ListSink())
    assert summary.slices == 0 and summary.severity.grade is None


def test_nothing_of_a_slice_is_kept_once_its_sink_has_it():
    """Memory stays flat in the study's length: the pipeline holds no slice or label map
    of earlier slices (the sink here keeps only weak references)."""
    refs = []

    class WeakSink:
        def add(self, index, result):
            refs.append(
                (
                    weakref.ref(
                        result.source.pixels.base
                        if result.source.pixels.base is not None
                        else result.source.pixels
                    ),
                    weakref.ref(result),
                )
            )

    def lazily():
        for k in range(30):
            yield _slice(k % 8)

    run_study(lazily(), StandInSegmenter(), WeakSink())
    gc.collect()
    alive = [k for k, (pixels, result) in enumerate(refs) if pixels() is not None or result() is not None]
    assert alive == [], alive


def test_a_failing_segmenter_stops_the_run_and_the_sink_has_the_slices_before_it():
    from tests.stubs import FailingOnThirdSlice

    sink = ListSink()
    with pytest.raises(RuntimeError, match="third slice"):
        run_study([_slice(k) for k in range(5)], FailingOnThirdSlice(), sink)
    assert [index for index, _ in sink.got] == [1, 2]


def test_a_tee_hands_each_slice_to_every_sink_in_order():
    order = []

    class Named:
        def __init__(self, name):
            self.name = name

        def add(self, index, result):
            order.append((self.name, index))

    run_study([_slice(0), _slice(1)], StandInSegmenter(), Tee(Named("folder"), Named("database")))
    assert order == [("folder", 1), ("database", 1), ("folder", 2), ("database", 2)]


def test_slices_the_ct_check_segmented_are_answered_from_memory_once_and_the_rest_segmented():
    engine = CountingSegmenter()
    slices = [_slice(k) for k in range(3)]
    known = np.full((SIDE, SIDE), 1, np.uint8)
    remembered = Remembered(engine, [(slices[1].pixels, known)])
    assert remembered.segment(slices[1].pixels) is known and engine.calls == 0
    assert np.array_equal(remembered.segment(slices[0].pixels), stand_in_labels(slices[0].pixels))
    assert engine.calls == 1
    # a slice is known by its content (a lazy study decodes it again into a new array),
    # not by its array; one pixel changed is another slice; a slice is answered once
    remembered = Remembered(engine, [(slices[2].pixels, known)])
    changed = slices[2].pixels.copy()
    changed[5, 7] ^= 1
    assert remembered.segment(changed) is not known and engine.calls == 2
    assert remembered.segment(slices[2].pixels.copy()) is known and engine.calls == 2
    assert remembered.segment(slices[2].pixels) is not known and engine.calls == 3


class StreamingSegmenter(CountingSegmenter):
    """The stand-in with a ``segment_stream`` like the Ensemble's (one slice ahead), and
    a record of the order in which it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.streamed: list[int] = []

    def segment_stream(self, slices):
        ahead = None
        for pixels, spacing_mm in slices:
            self.streamed.append(int((pixels == 90).sum()))
            if ahead is not None:
                yield self.segment(*ahead)
            ahead = (pixels, spacing_mm)
        if ahead is not None:
            yield self.segment(*ahead)


@pytest.mark.parametrize("remembered_at", [(), (0,), (2,), (4,), (0, 1), (0, 2, 4), (0, 1, 2, 3, 4)])
def test_a_stream_answers_remembered_slices_in_their_place_and_segments_the_rest_once(remembered_at):
    slices = [_slice(k) for k in range(5)]
    engine = StreamingSegmenter()
    known = {k: np.full((SIDE, SIDE), 100 + k, np.uint8) for k in remembered_at}
    remembered = Remembered(engine, [(slices[k].pixels, labels) for k, labels in known.items()])
    out = list(remembered.segment_stream((ct.pixels, None) for ct in slices))
    assert len(out) == 5
    for k, labels in enumerate(out):
        expected = known[k] if k in known else stand_in_labels(slices[k].pixels)
        assert np.array_equal(labels, expected), k
    assert engine.calls == 5 - len(remembered_at)
    assert engine.streamed == [int((slices[k].pixels == 90).sum()) for k in range(5) if k not in known]


def test_run_study_through_a_stream_gives_what_it_gives_slice_by_slice():
    slices = [_slice(k) for k in range(4)]
    by_stream, by_slice = ListSink(), ListSink()
    a = run_study(slices, StreamingSegmenter(), by_stream)
    b = run_study(slices, CountingSegmenter(), by_slice)
    assert a == b
    assert [i for i, _ in by_stream.got] == [1, 2, 3, 4]
    for (_, x), (_, y) in zip(by_stream.got, by_slice.got, strict=True):
        assert x.source is y.source and np.array_equal(x.labels, y.labels) and x.areas == y.areas
