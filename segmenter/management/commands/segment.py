"""python manage.py segment PATH [PATH ...] --out DIR [--save]

Segments slices, archives of slices (zip, RAR, 7z, tar, tar.gz, tar.xz), folders and
volumes without a server. For each PATH it writes, under DIR/<name>/, each slice's label map (values 0 GGO, 1 consolidation, 2 other lung,
3 background) and overlay PNG, report.csv and report.json, and prints the study grade.
Nothing touches the database unless --save is given, which also stores each result as
an analysis viewable in the web app and the API.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from segmenter.ml.io.archive import ARCHIVE_SUFFIXES, read_folder
from segmenter.ml.io.ctcheck import check_lungs, check_slices
from segmenter.ml.io.imaging import CTSlice, UnreadableImage
from segmenter.ml.pipeline import (
    DISCLAIMER,
    analyse_slice,
    report_csv,
    report_json,
    report_rows,
    slice_stem,
    study_from,
)
from segmenter.ml.results.overlay import png_bytes, render_overlay


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", *ARCHIVE_SUFFIXES, ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "study"
    return name or "study"


def _slice_stem(ct: CTSlice, index: int) -> str:
    """'0003-a' for the third slice, from 'study/a.dcm'; '0003-x-002' from frame 2 of x.dcm."""
    base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in slice_stem(ct.name)) or "slice"
    return f"{index:04d}-{base}"


class Command(BaseCommand):
    help = __doc__.split("\n\n")[0]

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", type=Path, help="slices, archives of slices (zip, RAR, 7z, tar, tar.gz, tar.xz), folders or NIfTI volumes")
        parser.add_argument("--out", type=Path, required=True, help="folder for the results")
        parser.add_argument("--save", action="store_true", help="also store each result in the database")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, paths: list[Path], out: Path, save: bool, no_progress: bool, **options):
        from segmenter import services
        from segmenter.engine import get_segmenter

        studies = []
        for path in paths:  # read everything first: bad input stops before any work
            studies.append((path, self._read(path, services)))
        segmenter = get_segmenter()
        self.stderr.write(DISCLAIMER)
        for path, (kind, slices) in studies:
            target = out / _stem(path)
            target.mkdir(parents=True, exist_ok=True)
            results = []
            bar = self._progress(slices, path.name, disabled=no_progress)
            for k, ct in enumerate(bar, start=1):
                result = analyse_slice(ct, segmenter)
                stem = _slice_stem(ct, k)
                (target / f"{stem}-labels.png").write_bytes(png_bytes(result.labels))
                (target / f"{stem}-overlay.png").write_bytes(png_bytes(render_overlay(ct.pixels, result.labels)))
                results.append(result)
            study = study_from(results)
            rows, total = report_rows([r.source.name for r in results], [r.areas for r in results])
            (target / "report.csv").write_text(report_csv(rows, total))
            (target / "report.json").write_text(json.dumps(report_json(rows, total, source=str(path)), indent=2) + "\n")
            line = self._describe(path, study.severity, target)
            if save:
                analysis = services.analysis_record(  # stores what was computed above, not a second run
                    source_name=path.name, kind=kind, slices=slices, labels=[r.labels for r in results]
                )
                line += f"  saved as {analysis.id}"
            self.stdout.write(line)

    def _read(self, path: Path, services) -> tuple[str, list[CTSlice]]:
        from segmenter.engine import get_segmenter

        if not path.exists():
            raise CommandError(f"{path} does not exist")
        try:
            if path.is_dir():
                slices = read_folder(path, services.archive_limits())
                check_slices(slices, study=True)
                check_lungs(slices, get_segmenter(), study=True)
                return "study", slices
            with open(path, "rb") as fh:
                parsed = services.upload_read(stream=fh, name=path.name, size=path.stat().st_size)
            return parsed.kind, parsed.slices
        except (services.UploadError, UnreadableImage) as exc:
            raise CommandError(f"{path}: {exc}") from exc

    def _progress(self, slices, label: str, disabled: bool):
        from tqdm import tqdm

        return tqdm(
            slices, desc=label, unit="slice", file=sys.stderr, disable=disabled or len(slices) < 2, leave=False
        )

    def _describe(self, path: Path, severity, target: Path) -> str:
        if severity.grade is None:
            return f"{path}: no lung found -> {target}"
        return (
            f"{path}: {severity.grade} ({severity.message}); lesion {severity.lesion_percent:.1f} % of the lung "
            f"(GGO {severity.ggo_percent:.1f} %, consolidation {severity.consolidation_percent:.1f} %) -> {target}"
        )
