"""`make serve` runs collectstatic and gunicorn under the same settings (run with stand-in
programs that record their environment; .ci/serve-check starts the real thing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORD = """#!/bin/sh
echo "$(basename "$0") manifest=$DJANGO_STATIC_MANIFEST debug=$DJANGO_DEBUG key=${DJANGO_SECRET_KEY:+set} $*" >> "$LOG"
[ "$1" = -c ] && echo a-generated-key
exit 0
"""


@pytest.fixture
def fake_venv(tmp_path) -> Path:
    """A folder shaped like .venv whose python and gunicorn only record how they were run."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for program in ("python", "gunicorn"):
        (venv / "bin" / program).write_text(RECORD)
        (venv / "bin" / program).chmod(0o755)
    (venv / ".installed").touch()
    os.utime(venv / ".installed", (2**32, 2**32))  # newer than requirements.txt: nothing to install
    return venv


def _make_serve(venv: Path, log: Path, **env: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SEGMENTER_"))}
    subprocess.run(
        ["make", "-s", "serve", f"VENV={venv}", "WORKERS=1", "PORT=18999"],
        cwd=ROOT, env={**clean, **env, "LOG": str(log)}, check=True, timeout=60,
    )
    return log.read_text().splitlines()


def test_collectstatic_and_gunicorn_both_use_the_static_manifest(fake_venv, tmp_path):
    lines = _make_serve(fake_venv, tmp_path / "log")
    collect = next(line for line in lines if "collectstatic" in line)
    serve = next(line for line in lines if line.startswith("gunicorn"))
    assert "manifest=1" in collect and "manifest=1" in serve
    assert "debug=0" in collect and "debug=0" in serve
    assert "key=set" in serve


def test_make_serve_keeps_a_debug_setting_given_to_it(fake_venv, tmp_path):
    lines = _make_serve(fake_venv, tmp_path / "log", DJANGO_DEBUG="1", DJANGO_SECRET_KEY="mine")
    assert all("debug=1" in line and "manifest=1" in line for line in lines)
