"""The settings read from the environment: debug only when asked for, no default secret
key outside debug, HSTS only behind HTTPS."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = ("DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_SECURE_COOKIES", "DJANGO_HSTS_SECONDS",
             "DJANGO_TRUST_X_FORWARDED_PROTO")


@pytest.fixture
def load(monkeypatch):
    """A function that runs _42epochs/settings.py afresh under these variables and returns its names."""

    def run(**env: str) -> dict:
        for name in VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(ROOT / "_42epochs" / "settings.py"))

    return run


def test_debug_is_off_when_DJANGO_DEBUG_is_unset(load):
    assert load()["DEBUG"] is False


def test_debug_is_on_only_when_asked_for(load):
    assert load(DJANGO_DEBUG="1")["DEBUG"] is True
    assert load(DJANGO_DEBUG="0")["DEBUG"] is False


def test_without_debug_there_is_no_default_secret_key(load):
    assert load()["SECRET_KEY"] == ""
    assert load(DJANGO_SECRET_KEY="from-the-environment")["SECRET_KEY"] == "from-the-environment"


def test_debug_has_a_development_key(load):
    assert "insecure" in load(DJANGO_DEBUG="1")["SECRET_KEY"]


def test_hsts_is_off_unless_cookies_are_secure(load):
    assert load()["SECURE_HSTS_SECONDS"] == 0
    assert load(DJANGO_SECURE_COOKIES="1")["SECURE_HSTS_SECONDS"] == 365 * 24 * 3600
    assert load(DJANGO_SECURE_COOKIES="1", DJANGO_HSTS_SECONDS="600")["SECURE_HSTS_SECONDS"] == 600
    assert load(DJANGO_HSTS_SECONDS="600")["SECURE_HSTS_SECONDS"] == 0


def test_the_forwarded_scheme_is_trusted_only_when_asked_for(load):
    assert "SECURE_PROXY_SSL_HEADER" not in load()
    assert load(DJANGO_TRUST_X_FORWARDED_PROTO="1")["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


def test_a_serving_process_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES and k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", "import _42epochs.wsgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr
