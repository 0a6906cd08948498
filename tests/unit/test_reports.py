"""The CSV report never hands a spreadsheet a formula."""

import csv
import io

from segmenter.ml.results.reports import report_csv, report_rows
from segmenter.ml.results.severity import Areas


def test_slice_names_that_spreadsheets_run_as_formulas_are_written_as_text():
    names = ["=cmd|' /C calc'!A0.png", "+SUM(A1).png", "@x.png", "-2+3.png", "plain.png"]
    rows, total = report_rows(names, [Areas(ggo=1, consolidation=0, other_lung=9) for _ in names])
    cells = [r["name"] for r in csv.DictReader(io.StringIO(report_csv(rows, total)))]
    assert cells[:5] == ["'=cmd|' /C calc'!A0.png", "'+SUM(A1).png", "'@x.png", "'-2+3.png", "plain.png"]
    assert cells[5] == "study total"
