"""gunicorn as `make serve` starts it: the timeout ends a request that runs past it, and
the worker that replaces the killed one serves the next request."""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.stubs import StandInSegmenter

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 6
#: The arbiter looks once a second, aborts, then kills on its next look; and a loaded
#: machine is slow to notice.
GRACE_S = 6


class StuckSegmenter(StandInSegmenter):
    """A stand-in whose every slice takes far longer than any request may."""

    def segment(self, pixels, spacing_mm=None):
        time.sleep(120)
        return super().segment(pixels, spacing_mm)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_workers_are_sync_so_that_the_timeout_applies(monkeypatch):
    monkeypatch.setenv("GUNICORN_TIMEOUT", "42")
    config = runpy.run_path(str(ROOT / "_42epochs" / "gunicorn.py"))
    assert config["worker_class"] == "sync" and config["threads"] == 1  # threads > 1 means gthread
    assert config["timeout"] == 42 and config["preload_app"] is False


@pytest.fixture
def gunicorn(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_MEDIA_ROOT": str(tmp_path / "media"),
        "SEGMENTER_ENGINE": "tests.integration.test_gunicorn.StuckSegmenter",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "gunicorn-test",
        "PYTHONPATH": str(ROOT),
        "PORT": str(_free_port()),
        "WEB_CONCURRENCY": "1",
        "GUNICORN_TIMEOUT": str(TIMEOUT_S),
    }
    env.pop("DJANGO_TASKS_BACKEND", None)  # immediate: the analysis runs inside the request
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:_42epochs.gunicorn"], env=env, cwd=ROOT,
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{env['PORT']}"
    try:
        for _ in range(150):
            if server.poll() is not None:
                break
            try:
                requests.get(f"{url}/api/v1/openapi.json", timeout=2)
                break
            except requests.RequestException:  # refused, or queued while the worker boots
                time.sleep(0.2)
        else:
            pytest.fail("gunicorn did not start: " + (tmp_path / "gunicorn.log").read_text()[-2000:])
        server.url, server.log = url, tmp_path / "gunicorn.log"
        yield server
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_a_request_past_the_timeout_is_ended_and_the_next_one_is_served(gunicorn, samples):
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):  # not an answer claiming the analysis is running
        requests.post(f"{gunicorn.url}/api/v1/analyses", files={"file": ("a.png", samples.png())}, timeout=60)
    elapsed = time.monotonic() - started
    assert TIMEOUT_S - 1 <= elapsed <= TIMEOUT_S + GRACE_S, elapsed
    log = gunicorn.log.read_text()
    assert "WORKER TIMEOUT" in log and "ran past the 6 s timeout" in log
    response = requests.get(f"{gunicorn.url}/api/v1/openapi.json", timeout=30)  # a fresh worker
    assert response.status_code == 200


def test_a_request_gunicorn_cannot_parse_is_answered_in_json(gunicorn):
    host, port = gunicorn.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/analyses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ab\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"Content-Type: application/json" in head
    assert "CONTENT-LENGTH" in json.loads(body)["error"].upper()
