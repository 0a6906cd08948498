"""Load on several processes: ``python -m segmenter.load_bench [--workers 1 2] [--json FILE]``.

Starts two web processes (gunicorn, one sync worker each, as ``make serve WORKERS=1``
would on two machines) and N queue workers (``manage.py worker``) on one database and one
file store, then lets --clients clients (threads) upload --studies studies between them,
each through the web processes in turn, and follow each study as the progress page does
(GET its API status every second) until it is done. For each worker count it reports:

* studies_per_min: studies done per minute, from the first upload to the last done;
* slowest_study_s: the longest upload-to-done time of one study (and the median);
* status_5xx: answers 500 and over, of every request (must be 0); other_errors;
* worker_peak_rss_mb: each worker's peak resident memory (VmHWM);
* db_commits_per_s_idle / _busy (PostgreSQL only): transactions the database committed
  per second while the workers waited for work (their queue polling) and during the run.

The database is $DATABASE_URL (a fresh database is created on that PostgreSQL server and
dropped after), else a temporary SQLite file; the file store a temporary media folder,
or an S3 bucket (created) with --s3-endpoint. Each study is a zip of --slices real CT
DICOM slices (the data set's two samples, each copy made unique). The real ensemble
unless --engine names another. A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

from segmenter.ml.paths import DEFAULT_DATA_ROOT

log = logging.getLogger("segmenter.load_bench")

ROOT = Path(__file__).resolve().parents[1]
#: How often a client asks whether its study is done: the progress page's rate.
POLL_SECONDS = 1.0
MAX_STUDY_SECONDS = 1800


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 300.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _peak_rss_mb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def _study(data_root: Path, n: int, seed: int) -> bytes:
    """A zip of n real CT DICOM slices, each with its own UIDs and a few pixels changed."""
    import pydicom
    from pydicom.uid import generate_uid

    buf = io.BytesIO()
    series = generate_uid()
    with zipfile.ZipFile(buf, "w") as archive:
        for k in range(n):
            ds = pydicom.dcmread(data_root / "dicom-samples" / f"{k % 2}.dcm")
            ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = generate_uid(), series, k + 1
            pixels = ds.pixel_array.copy()
            pixels[0, :8] = seed * 100 + k
            ds.PixelData = pixels.tobytes()
            out = io.BytesIO()
            ds.save_as(out)
            archive.writestr(f"study/{k:03d}.dcm", out.getvalue())
    return buf.getvalue()


class _Database:
    """A fresh database for one run: on the PostgreSQL server of $DATABASE_URL, else SQLite."""

    def __init__(self, folder: Path) -> None:
        import dj_database_url

        self.admin = None
        given = os.environ.get("DATABASE_URL", "")
        if given.startswith(("postgres://", "postgresql://")):
            db = dj_database_url.parse(given)
            self.name = f"load_{uuid.uuid4().hex[:12]}"
            self.admin = dict(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"],
                              password=db["PASSWORD"], dbname="postgres")
            self._sql(f'CREATE DATABASE "{self.name}"')
            password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
            self.url = f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{self.name}"
        else:
            self.url = f"sqlite:///{folder / 'load.sqlite3'}"

    def _sql(self, statement: str, fetch: bool = False):
        import psycopg

        with psycopg.connect(**self.admin, autocommit=True) as conn:
            rows = conn.execute(statement)
            return rows.fetchall() if fetch else None

    def commits(self) -> int | None:
        if self.admin is None:
            return None
        rows = self._sql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{self.name}'", fetch=True)
        return int(rows[0][0])

    def drop(self) -> None:
        if self.admin is not None:
            self._sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _run(args, workers: int, studies: list[bytes]) -> dict:
    import requests

    folder = Path(tempfile.mkdtemp(prefix="load-bench-"))
    database = _Database(folder)
    env = {
        **os.environ,
        "DATABASE_URL": database.url,
        "DJANGO_TASKS_BACKEND": "django_tasks_db.DatabaseBackend",
        "DJANGO_MEDIA_ROOT": str(folder / "media"),
        "DJANGO_SECRET_KEY": "load-bench",
        "DJANGO_DEBUG": "0",
        "SEGMENTER_ENGINE": args.engine,
        "SEGMENTER_THREADS": str(args.threads),
        "WEB_CONCURRENCY": "1",
        "PYTHONPATH": str(ROOT),
    }
    if args.s3_endpoint:  # credentials and region from the environment, the boto3 way
        import boto3

        bucket = f"load-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=args.s3_endpoint).create_bucket(Bucket=bucket)
        env["DJANGO_STORAGE_S3_BUCKET"] = bucket
        env["DJANGO_STORAGE_S3_ENDPOINT_URL"] = args.s3_endpoint
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    processes: list[subprocess.Popen] = []
    logs = []

    def start(name: str, command: list[str], **extra) -> subprocess.Popen:
        log = open(folder / f"{name}.log", "w")  # noqa: SIM115 - closed at the end
        logs.append(log)
        process = subprocess.Popen(command, env={**env, **extra}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    try:
        webs = []
        for k in range(2):
            port = _free_port()
            start(f"web-{k}", [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:_42epochs.gunicorn"],
                  PORT=str(port))
            webs.append(f"http://127.0.0.1:{port}")
        worker_processes = [
            start(f"worker-{k}", [*manage, "worker", "--no-reload", "--no-startup-delay"]) for k in range(workers)
        ]
        for url in webs:
            _wait_http(f"{url}/api/v1/openapi.json")
        time.sleep(args.settle)  # the workers load the ensemble and start polling
        idle_commits = None
        before = database.commits()
        if before is not None:
            time.sleep(10)
            idle_commits = (database.commits() - before) / 10

        statuses: list[int] = []
        lock = threading.Lock()
        times: list[float] = []
        errors: list[str] = []
        queue = list(enumerate(studies))

        def client(c: int) -> None:
            session = requests.Session()
            while True:
                with lock:
                    if not queue:
                        return
                    k, data = queue.pop(0)
                web = webs[k % 2]
                t0 = time.monotonic()
                response = session.post(f"{web}/api/v1/analyses", files={"file": (f"study-{k}.zip", data)},
                                        timeout=600)
                with lock:
                    statuses.append(response.status_code)
                if response.status_code != 202:
                    with lock:
                        errors.append(f"study {k}: {response.status_code} {response.text[:200]}")
                    continue
                status_url = f"{webs[(k + 1) % 2]}/api/v1/analyses/{response.json()['id']}"  # the other one
                while time.monotonic() - t0 < MAX_STUDY_SECONDS:
                    time.sleep(POLL_SECONDS)
                    state = session.get(status_url, timeout=60)
                    with lock:
                        statuses.append(state.status_code)
                    if state.status_code == 200 and state.json()["status"] in ("done", "failed"):
                        if state.json()["status"] == "failed":
                            with lock:
                                errors.append(f"study {k}: failed: {state.json()['error']}")
                        break
                with lock:
                    times.append(time.monotonic() - t0)

        start_commits, t_start = database.commits(), time.monotonic()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - t_start
        busy_commits = None if start_commits is None else (database.commits() - start_commits) / elapsed
        return {
            "workers": workers,
            "studies": len(studies),
            "slices_per_study": args.slices,
            "clients": args.clients,
            "seconds": round(elapsed, 1),
            "studies_per_min": round(len(times) / elapsed * 60, 2),
            "slices_per_s": round(len(times) * args.slices / elapsed, 2),
            "slowest_study_s": round(max(times), 1) if times else None,
            "median_study_s": round(statistics.median(times), 1) if times else None,
            "requests": len(statuses),
            "status_5xx": sum(s >= 500 for s in statuses),
            "other_errors": errors,
            "worker_peak_rss_mb": [_peak_rss_mb(p.pid) for p in worker_processes],
            "db_commits_per_s_idle": None if idle_commits is None else round(idle_commits, 1),
            "db_commits_per_s_busy": None if busy_commits is None else round(busy_commits, 1),
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()
        database.drop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m segmenter.load_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--slices", type=int, default=4, help="CT DICOM slices per study")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="a run for each worker count")
    parser.add_argument("--engine", default="segmenter.engine.load_ensemble")
    parser.add_argument("--threads", type=int, default=1, help="SEGMENTER_THREADS of every process")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds the workers get to start")
    parser.add_argument("--s3-endpoint", help="store files in a fresh bucket on this S3 server")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    studies = [_study(args.data_root, args.slices, k) for k in range(args.studies)]
    runs = []
    for workers in args.workers:
        result = _run(args, workers, studies)
        log.info("%s", json.dumps(result))
        runs.append(result)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 1 if any(r["status_5xx"] or r["other_errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
