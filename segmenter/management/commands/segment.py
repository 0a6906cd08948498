"""python manage.py segment PATH [PATH ...] --out DIR [--save]

Segments slices, archives of slices (zip, RAR, 7z, tar, tar.gz, tar.xz), folders and
volumes without a server. For each PATH it writes, under DIR/<name>/, each slice's label map (values 0 GGO, 1 consolidation, 2 other lung,
3 background) and overlay PNG, report.csv and report.json, and prints the study grade.
Nothing touches the database unless --save is given, which also stores each result as
an analysis viewable in the web app and the API: the same pass over the slices feeds
the folder and the database (the networks run once per slice).
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from segmenter.ml.io.names import file_part, slice_stem, strip_suffix
from segmenter.ml.pipeline import Remembered, SliceAnalysis, StudySummary, Tee, run_study
from segmenter.ml.results.overlay import png_bytes, render_overlay
from segmenter.ml.results.reports import DISCLAIMER, report_csv, report_json, report_rows
from segmenter.ml.results.severity import Areas
from segmenter.reasons import caution_text


class FolderSink:
    """The pipeline's sink for the command line: each slice's label map and overlay PNG
    in ``target`` as it comes; of each slice only its name and areas are kept, for the
    reports."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.names: list[str] = []
        self.areas: list[Areas] = []

    def add(self, index: int, result: SliceAnalysis) -> None:
        ct = result.source
        stem = f"{index:04d}-{file_part(slice_stem(ct.name), 'slice')}"  # '0003-a', '0003-x-002'
        (self.target / f"{stem}-labels.png").write_bytes(png_bytes(result.labels))
        (self.target / f"{stem}-overlay.png").write_bytes(png_bytes(render_overlay(ct.pixels, result.labels)))
        self.names.append(ct.name)
        self.areas.append(result.areas)

    def write_reports(self, source: Path) -> None:
        rows, total = report_rows(self.names, self.areas)
        (self.target / "report.csv").write_text(report_csv(rows, total))
        (self.target / "report.json").write_text(json.dumps(report_json(rows, total, source=str(source)), indent=2) + "\n")


class Command(BaseCommand):
    help = __doc__.split("\n\n")[0]

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", type=Path, help="slices, archives of slices (zip, RAR, 7z, tar, tar.gz, tar.xz), folders or NIfTI volumes")
        parser.add_argument("--out", type=Path, required=True, help="folder for the results")
        parser.add_argument("--save", action="store_true", help="also store each result in the database")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, paths: list[Path], out: Path, save: bool, no_progress: bool, **options):
        # Read and check everything first: bad input stops before any work. A volume's
        # slices are made one at a time as they are segmented.
        with ExitStack() as files:  # a volume's slices are read from its open file
            studies = [(path, self._read(path, files)) for path in paths]
            self._segment_all(studies, out, save, no_progress)

    def _segment_all(self, studies, out: Path, save: bool, no_progress: bool) -> None:
        from segmenter.engine import get_segmenter

        segmenter = get_segmenter()
        self.stderr.write(DISCLAIMER)
        for path, parsed in studies:
            target = out / (strip_suffix(path.name) or "study")
            target.mkdir(parents=True, exist_ok=True)
            folder = FolderSink(target)
            engine = Remembered(segmenter, parsed.segmented)  # what the CT check segmented runs once
            with self._progress(len(parsed.slices), path.name, disabled=no_progress) as bar:
                if save:
                    from segmenter import processing

                    with processing.analysis_recording(
                        source_name=path.name, kind=parsed.kind, slices_total=len(parsed.slices), segmenter=segmenter
                    ) as stored:

                        def progress(done, total, stored=stored, bar=bar):
                            bar.update()
                            stored.progress(done, total)

                        summary = run_study(parsed.slices, engine, Tee(folder, stored), progress)
                        stored.finish(summary)
                    saved = f"  saved as {stored.analysis.id}"
                else:
                    summary = run_study(parsed.slices, engine, folder, lambda done, total: bar.update())
                    saved = ""
            folder.write_reports(path)
            self.stdout.write(self._describe(path, summary, target) + saved)
            for name, caution in parsed.cautions:
                self.stderr.write(f"{path.name}: {caution_text(name, caution, len(parsed.slices) > 1)}")

    def _read(self, path: Path, files: ExitStack):
        """The checked upload at ``path``; its file (and a volume's temporary file) stay
        open until ``files`` closes."""
        from segmenter import uploads

        if not path.exists():
            raise CommandError(f"{path} does not exist")
        try:
            if path.is_dir():
                return uploads.folder_read(path)
            fh = files.enter_context(open(path, "rb"))  # noqa: SIM115 - closed with ``files``
            parsed = uploads.upload_read(stream=fh, name=path.name, size=path.stat().st_size)
            files.callback(parsed.close)
            return parsed
        except uploads.UploadError as exc:
            raise CommandError(f"{path}: {exc}") from exc

    def _progress(self, total: int, label: str, disabled: bool):
        from tqdm import tqdm

        return tqdm(total=total, desc=label, unit="slice", file=sys.stderr, disable=disabled or total < 2, leave=False)

    def _describe(self, path: Path, summary: StudySummary, target: Path) -> str:
        severity = summary.severity
        if severity.grade is None:
            return f"{path}: no lung found -> {target}"
        return (
            f"{path}: {severity.grade} ({severity.message}); lesion {severity.lesion_percent:.1f} % of the lung "
            f"(GGO {severity.ggo_percent:.1f} %, consolidation {severity.consolidation_percent:.1f} %) -> {target}"
        )
