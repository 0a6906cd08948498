"""The study pipeline every front end runs: decoded slices in, finished slices out, one at a time.

``run_study`` takes a study's slices as an iterable (a list, or a lazy sequence that
decodes each slice only when it is reached, as ``volumes.read_nifti`` and
``archive.read_any_archive`` return), and for each slice in order: segments it, grades
it (``grade_slice``), hands the result to a *sink* and reports progress. Then it grades
the study from the summed areas. With the Ensemble it works one slice ahead
(``Ensemble.segment_stream``: the next slice's networks run while this one is finished,
graded and handed over). It keeps nothing of a slice once its sink has it, so its memory
does not grow with the study's length; what is kept of each slice (files, rows, report
lines) is the sink's business.

The front ends and their sinks:

* the web pages, the JSON API and the worker: ``segmenter.processing`` stores each
  slice's PNGs, default overlay and thumbnail on a writer thread and collects its row;
* the command line (``manage.py segment``): label and overlay PNGs in a folder, and with
  ``--save`` the database too, both fed in one pass through ``Tee``.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .io.imaging import CTSlice
from .results.severity import Areas, Severity, assess, measure


class Segmenter(Protocol):
    """Anything with ``segment(uint8 (H, W), spacing_mm=None) -> uint8 (H, W) labels``,
    where spacing_mm is the slice's (row, column) pixel spacing when known; the Ensemble
    is one."""

    def segment(self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> np.ndarray: ...


@dataclass
class SliceAnalysis:
    source: CTSlice
    labels: np.ndarray  # uint8 (H, W), see constants
    areas: Areas
    severity: Severity


class SliceSink(Protocol):
    """Where run_study hands each finished slice."""

    def add(self, index: int, result: SliceAnalysis) -> None:
        """Take slice number ``index`` (1-based, in study order), segmented and graded."""
        ...


#: ``progress(done, total)``: slices finished so far, and the study's length (None when
#: the slices come from an iterable that does not know it).
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class StudySummary:
    """What run_study returns: how many slices it processed, their summed areas and the
    study's grade from those sums."""

    slices: int
    areas: Areas
    severity: Severity


def grade_slice(ct: CTSlice, labels: np.ndarray) -> SliceAnalysis:
    """Measure and grade a slice's label map."""
    areas = measure(labels, ct.pixel_spacing_mm, ct.slice_thickness_mm)
    return SliceAnalysis(ct, labels, areas, assess(areas))


def run_study(
    slices: Iterable[CTSlice], segmenter: Segmenter, sink: SliceSink, progress: Progress | None = None
) -> StudySummary:
    """Segment and grade each slice in order, hand each to ``sink.add(index, result)``
    (index from 1) and then call ``progress(done, total)``; grade the study from the
    summed areas. A segmenter with ``segment_stream`` (the Ensemble) works one slice
    ahead. Exceptions of the segmenter, the sink or progress stop the run and propagate
    (the sink's owner cleans up)."""
    total = len(slices) if isinstance(slices, Sized) else None
    summed: Areas | None = None
    done = 0
    for done, (ct, labels) in enumerate(segmented(slices, segmenter), start=1):
        result = grade_slice(ct, labels)
        summed = result.areas if summed is None else summed + result.areas
        sink.add(done, result)
        if progress is not None:
            progress(done, total)
    areas = summed if summed is not None else Areas()
    return StudySummary(slices=done, areas=areas, severity=assess(areas))


def segmented(slices: Iterable[CTSlice], segmenter: Segmenter) -> Iterator[tuple[CTSlice, np.ndarray]]:
    """(slice, labels) of each slice in order: through ``segmenter.segment_stream`` where it
    has one (holding the slice it works ahead on), else one ``segment`` call each."""
    stream = getattr(segmenter, "segment_stream", None)
    if stream is None:
        for ct in slices:
            yield ct, segmenter.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm)
        return
    held: deque[CTSlice] = deque()

    def inputs():
        for ct in slices:
            held.append(ct)
            yield ct.pixels, ct.pixel_spacing_mm

    for labels in stream(inputs()):
        yield held.popleft(), labels


class Remembered:
    """A segmenter that answers the slices already segmented (by the CT check's
    ``check_lungs``: the same networks, the same labels) from ``known``, each once, and
    asks ``segmenter`` for the rest. A slice is known by its pixels' shape and content
    (a study read lazily decodes it again, into a new array, when it is reached)."""

    def __init__(self, segmenter: Segmenter, known: Iterable[tuple[np.ndarray, np.ndarray]] = ()) -> None:
        self.segmenter = segmenter
        self.known = {_content_key(pixels): labels for pixels, labels in known}

    def _recall(self, pixels: np.ndarray) -> np.ndarray | None:
        return self.known.pop(_content_key(pixels), None) if self.known else None

    def segment(self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> np.ndarray:
        remembered = self._recall(pixels)
        return remembered if remembered is not None else self.segmenter.segment(pixels, spacing_mm=spacing_mm)

    def segment_stream(
        self, slices: Iterable[tuple[np.ndarray, tuple[float, float] | None]]
    ) -> Iterator[np.ndarray]:
        """``segment`` of each (pixels, spacing_mm), in order; the slices not remembered go
        through the segmenter's own ``segment_stream`` where it has one."""
        inner = getattr(self.segmenter, "segment_stream", None)
        if inner is None:
            for pixels, spacing_mm in slices:
                yield self.segment(pixels, spacing_mm)
            return
        answers: deque[np.ndarray | None] = deque()  # per slice: remembered labels, or None

        def unknown():
            for pixels, spacing_mm in slices:
                answers.append(self._recall(pixels))
                if answers[-1] is None:
                    yield pixels, spacing_mm

        for labels in inner(unknown()):
            while answers[0] is not None:  # remembered slices before this one
                yield answers.popleft()
            answers.popleft()
            yield labels
        yield from answers  # remembered slices after the last one segmented


def _content_key(pixels: np.ndarray) -> tuple:
    return pixels.shape, pixels.dtype.str, hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).digest()


class Tee:
    """A sink that hands each slice to several sinks, in the order given."""

    def __init__(self, *sinks: SliceSink) -> None:
        self.sinks = sinks

    def add(self, index: int, result: SliceAnalysis) -> None:
        for sink in self.sinks:
            sink.add(index, result)
