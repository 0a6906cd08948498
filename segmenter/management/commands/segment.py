"""python manage.py segment PATH [PATH ...] --out DIR [--save] [--send]

Segments slices, archives of slices (zip, RAR, 7z, tar, tar.gz, tar.xz), folders,
volumes and series on a DICOMweb server (an address ``http(s)://…/studies/<uid>`` or
``…/studies/<uid>/series/<uid>``, credentials from SEGMENTER_DICOMWEB_USER / _PASSWORD
or _TOKEN) without a server of its own. For each PATH it writes, under DIR/<name>/,
each slice's label map (values 0 GGO, 1 consolidation, 2 other lung,
3 background) and overlay PNG, report.csv and report.json, and prints the study grade.
Nothing touches the database unless --save is given, which also stores each result as
an analysis viewable in the web app and the API: the same pass over the slices feeds
the folder and the database (the networks run once per slice). --send (or the setting
SEGMENTER_DICOMWEB_SEND_ALWAYS) stores the DICOM SEG and SR of each DICOMweb series back
on its server (STOW-RS).
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from segmenter.ml.io.dicomweb import parse_address
from segmenter.ml.io.names import file_part, slice_stem, strip_suffix
from segmenter.ml.pipeline import Remembered, SliceAnalysis, StudySummary, Tee, run_study
from segmenter.ml.results.overlay import png_bytes, read_label_png, render_overlay
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
        self.labels: list[Path] = []
        self.headers: list = []

    def add(self, index: int, result: SliceAnalysis) -> None:
        ct = result.source
        stem = f"{index:04d}-{file_part(slice_stem(ct.name), 'slice')}"  # '0003-a', '0003-x-002'
        (self.target / f"{stem}-labels.png").write_bytes(png_bytes(result.labels))
        self.labels.append(self.target / f"{stem}-labels.png")
        self.headers.append(ct.without_pixels())
        (self.target / f"{stem}-overlay.png").write_bytes(png_bytes(render_overlay(ct.pixels, result.labels)))
        self.names.append(ct.name)
        self.areas.append(result.areas)

    def write_reports(self, source, **extra) -> None:
        rows, total = report_rows(self.names, self.areas)
        (self.target / "report.csv").write_text(report_csv(rows, total))
        report = report_json(rows, total, source=str(source), **extra)
        (self.target / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    def label_maps(self):
        """The label maps written, read back (slice order)."""
        return [read_label_png(path.read_bytes()) for path in self.labels]


class Command(BaseCommand):
    help = __doc__.split("\n\n")[0]

    def add_arguments(self, parser):
        parser.add_argument(
            "paths", nargs="+", type=str,
            help="slices, archives of slices (zip, RAR, 7z, tar, tar.gz, tar.xz), folders, NIfTI volumes, or "
            "DICOMweb addresses of a study or series (http(s)://…/studies/UID[/series/UID])",
        )
        parser.add_argument("--out", type=Path, required=True, help="folder for the results")
        parser.add_argument("--save", action="store_true", help="also store each result in the database")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument(
            "--send", action="store_true",
            help="store the DICOM SEG and SR of each DICOMweb series back on its server (STOW-RS)",
        )

    def handle(self, *args, paths: list[str], out: Path, save: bool, no_progress: bool, send: bool = False,
               **options):
        from django.conf import settings

        send = send or settings.SEGMENTER_DICOMWEB_SEND_ALWAYS
        # Read and check everything first: bad input stops before any work. A volume's
        # slices are made one at a time as they are segmented.
        with ExitStack() as files:  # a volume's slices are read from its open file
            studies = [(self._source(path), self._read(path, files)) for path in paths]
            self._segment_all(studies, out, save, no_progress, send)

    @staticmethod
    def _source(path: str):
        """A DICOMweb address as it is, a file's path as a Path."""
        return path if parse_address(path) is not None else Path(path)

    def _segment_all(self, studies, out: Path, save: bool, no_progress: bool, send: bool) -> None:
        from segmenter.engine import get_segmenter

        segmenter = get_segmenter()
        self.stderr.write(DISCLAIMER)
        for path, parsed in studies:
            study = getattr(parsed, "study", None)  # read from a PACS
            name = f"series-{study.address.series}" if study else strip_suffix(path.name)
            target = out / (name or "study")
            target.mkdir(parents=True, exist_ok=True)
            folder = FolderSink(target)
            engine = Remembered(segmenter, parsed.segmented)  # what the CT check segmented runs once
            label = name if study else path.name
            if study is not None and study.choice:
                self.stdout.write(f"{path}: analysing {study.choice}")
            with self._progress(len(parsed.slices), label, disabled=no_progress) as bar:
                if save:
                    from segmenter import processing

                    with processing.analysis_recording(
                        source_name=label,
                        kind=parsed.kind,
                        slices_total=len(parsed.slices),
                        segmenter=segmenter,
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
            extra = {"series": study.address.url, "series_choice": study.choice} if study else {}
            folder.write_reports(path, **extra)
            self.stdout.write(self._describe(path, summary, target) + saved)
            for name, caution in parsed.cautions:
                self.stderr.write(f"{path.name}: {caution_text(name, caution, len(parsed.slices) > 1)}")
            if study is not None and send:
                self._send(study, folder, summary, segmenter)
            elif send:
                self.stderr.write(f"{path}: not from a PACS; nothing to send")

    def _send(self, study, folder: FolderSink, summary: StudySummary, segmenter) -> None:
        """The SEG and SR of a PACS series back to its server; a failure stops the command."""
        from segmenter import exports, pacs, uploads
        from segmenter.ml.results.exports import source_geometry

        version = exports.model_description(segmenter)["version"] or "unversioned"
        try:
            sent = pacs.results_send(
                address=study.address,
                labels=folder.label_maps(),
                areas=folder.areas,
                total=summary.areas,
                geometry=source_geometry(folder.headers),
                model_version=version,
                seed=pacs.send_seed(study.address.series, version),
            )
        except uploads.UploadError as exc:
            raise CommandError(f"{study.address.url}: {exc}") from exc
        self.stdout.write(f"{study.address.url}: sent {len(sent)} objects ({', '.join(sent)})")

    def _read(self, path: str, files: ExitStack):
        """The checked upload at ``path``; its file (and a volume's temporary file) stay
        open until ``files`` closes."""
        from segmenter import uploads

        address = parse_address(path)
        if address is not None:
            from segmenter import pacs

            try:
                parsed = pacs.address_read(address=address)
            except uploads.UploadError as exc:
                raise CommandError(f"{path}: {exc}") from exc
            files.callback(parsed.close)
            return parsed
        path = Path(path)
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
