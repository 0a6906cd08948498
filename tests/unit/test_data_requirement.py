"""The test suite cannot shrink unnoticed: without the real data set the tests that need
it fail, unless SEGMENTER_ALLOW_NO_DATA=1 turns them into skips that give the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: One fast test that needs the data set.
NEEDS_DATA = "tests/unit/test_imaging.py::test_it_reads_a_real_medseg_jpeg"


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("SEGMENTER_DATA_ROOT", "SEGMENTER_ALLOW_NO_DATA")
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", NEEDS_DATA],
        check=False,
        cwd=ROOT,
        env={**clean, "SEGMENTER_DATA_ROOT": str(tmp_path / "nowhere"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_data_set_fails_the_tests_that_need_it(tmp_path):
    result = _pytest(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "1 error" in result.stdout and "SEGMENTER_ALLOW_NO_DATA=1" in result.stdout, result.stdout
    assert str(tmp_path / "nowhere") in result.stdout


def test_allowing_a_missing_data_set_skips_them_with_the_reason(tmp_path):
    result = _pytest(tmp_path, SEGMENTER_ALLOW_NO_DATA="1")
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout and "skipped because SEGMENTER_ALLOW_NO_DATA=1" in result.stdout, (
        result.stdout
    )
