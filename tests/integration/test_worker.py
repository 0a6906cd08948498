"""A study through the database queue and `manage.py db_worker`, in separate processes.

A web server and a worker run as subprocesses sharing a fresh database (a temporary
SQLite file, or a temporary database on the PostgreSQL server of DATABASE_URL); the test
uploads a zip through the API and watches its progress until the result is ready, then
kills a worker halfway through another study and sees that study marked failed, and
pauses one (SIGSTOP) past its lease and sees that it cannot bring its study back.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from django.conf import settings

from tests.stubs import StandInSegmenter

ROOT = Path(__file__).resolve().parents[2]
SLICE_SECONDS = 0.4


class SlowStandIn(StandInSegmenter):
    """The stand-in engine, slowed down so that progress can be watched."""

    def segment(self, pixels: np.ndarray, spacing_mm=None) -> np.ndarray:
        time.sleep(SLICE_SECONDS)
        return super().segment(pixels)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def database_url(tmp_path):
    """A fresh, empty database on the same kind of server the suite runs on."""
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        yield f"sqlite:///{tmp_path / 'worker.sqlite3'}"
        return
    import psycopg

    db = settings.DATABASES["default"]
    name = f"worker_{uuid.uuid4().hex[:12]}"
    admin = dict(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], password=db["PASSWORD"], dbname="postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    yield f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{name}"
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stack(tmp_path, database_url):
    """Start (and finally stop) a web server and a worker on one database."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_TASKS_BACKEND": "django_tasks_db.DatabaseBackend",
        "DJANGO_MEDIA_ROOT": str(tmp_path / "media"),
        "SEGMENTER_ENGINE": "tests.integration.test_worker.SlowStandIn",
        "SEGMENTER_STALE_AFTER_SECONDS": "3",
        "SEGMENTER_MAX_ATTEMPTS": "1",  # one run: a stopped one fails the study (test_cluster.py: retried)
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "worker-test",
        "PYTHONPATH": str(ROOT),
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    port = _free_port()
    processes = {}

    def start(name, args):
        processes[name] = subprocess.Popen(
            [*manage, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "w")
        )
        return processes[name]

    start("web", ["runserver", "--noreload", f"127.0.0.1:{port}"])
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):  # up to 2 min: a loaded 2-core machine starts Django slowly
        try:
            requests.get(f"{base}/api/v1/openapi.json", timeout=2)
            break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        pytest.fail("the web server did not start: " + (tmp_path / "web.log").read_text()[-2000:])

    class Stack:
        url = base
        media = tmp_path / "media"

        def start_worker(self, name="worker", reap_every=60):
            args = ["--no-reload", "--interval", "0.2", "--no-startup-delay", "--reap-every", str(reap_every)]
            return start(name, ["worker", *args])

        def manage(self, *args) -> str:
            done = subprocess.run([*manage, *args], env=env, cwd=ROOT, check=True, capture_output=True, text=True)
            return done.stdout

    yield Stack()
    for p in processes.values():
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _study_zip(data_root: Path, n: int) -> bytes:
    images = sorted((data_root / "medseg-covid" / "images").glob("*.jpg"))[:n]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, path in enumerate(images):
            zf.writestr(f"study/{k:02d}.jpg", path.read_bytes())
    return buf.getvalue()


def _upload(stack, data: bytes) -> dict:
    response = requests.post(f"{stack.url}/api/v1/analyses", files={"file": ("study.zip", data)}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def _watch(stack, analysis_id: str, until, timeout: float = 60.0) -> list[dict]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{stack.url}/api/v1/analyses/{analysis_id}", timeout=10).json()
        seen.append(body)
        if until(body):
            return seen
        time.sleep(0.1)
    pytest.fail(f"timed out; last state {seen[-1]['status']} {seen[-1]['progress']}")


@pytest.mark.slow
def test_a_worker_processes_a_queued_study_and_the_api_shows_its_progress(stack, data_root):
    created = _upload(stack, _study_zip(data_root, 8))
    assert created["status"] == "queued" and created["progress"] == {"done": 0, "total": 8, "retrying": False}
    time.sleep(0.5)
    still_queued = requests.get(created["links"]["self"], timeout=10).json()
    assert still_queued["status"] == "queued"  # nothing happens without a worker
    stack.start_worker()
    seen = _watch(stack, created["id"], lambda b: b["status"] in ("done", "failed"))
    final = seen[-1]
    assert final["status"] == "done", final["error"]
    assert len(final["slices"]) == 8 and final["severity"]["grade"]
    partial = [b for b in seen if b["status"] == "running" and 0 < b["progress"]["done"] < 8]
    assert partial, "progress between 0 and 8 slices was never visible"
    assert all(b["slices"] == [] and b["severity"] is None for b in seen[:-1])  # never half-shown as done
    dones = [b["progress"]["done"] for b in seen]
    assert dones == sorted(dones)


@pytest.mark.slow
def test_a_worker_killed_mid_study_leaves_it_failed_not_half_done(stack, data_root):
    worker = stack.start_worker()
    created = _upload(stack, _study_zip(data_root, 12))
    _watch(stack, created["id"], lambda b: b["progress"]["done"] >= 2)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    seen = _watch(stack, created["id"], lambda b: b["status"] != "running", timeout=20)
    final = seen[-1]
    assert final["status"] == "failed"
    assert "stopped" in final["error"]
    assert final["slices"] == [] and final["severity"] is None


def _files_of(stack, analysis_id: str) -> list[Path]:
    return [p for p in (stack.media / "analyses" / analysis_id).rglob("*") if p.is_file()]


def _eventually(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_paused_worker_resumed_after_its_study_was_reaped_cannot_bring_it_back(stack, data_root):
    paused = stack.start_worker("paused")
    created = _upload(stack, _study_zip(data_root, 12))
    _watch(stack, created["id"], lambda b: b["progress"]["done"] >= 2)
    paused.send_signal(signal.SIGSTOP)
    try:
        _watch(stack, created["id"], lambda b: b["status"] == "failed", timeout=20)  # the lease expired
        assert _files_of(stack, created["id"])  # reading it deleted nothing
        stack.start_worker("reaper", reap_every=0.5)  # reaps at start, without anyone visiting the study
        _eventually(lambda: not _files_of(stack, created["id"]), timeout=120)  # the reaper starts slowly
    finally:
        paused.send_signal(signal.SIGCONT)
    time.sleep(3 * SLICE_SECONDS + 1)  # the resumed worker finishes its slice and finds its lease gone
    final = requests.get(created["links"]["self"], timeout=10).json()
    assert final["status"] == "failed" and "stopped" in final["error"]
    assert final["slices"] == [] and final["severity"] is None
    assert _files_of(stack, created["id"]) == []
    assert paused.poll() is None  # it stopped that study, not itself
    rows = stack.manage("shell", "-v", "0", "-c", "from django_tasks_db.models import DBTaskResult as T; "
                        "print(*T.objects.values_list('status', 'exception_class_path'))")
    assert rows.strip() == "('FAILED', 'segmenter.processing.LeaseLost')"  # the task row, too
    again = _upload(stack, _study_zip(data_root, 3))
    assert _watch(stack, again["id"], lambda b: b["status"] in ("done", "failed"))[-1]["status"] == "done"
