"""gunicorn settings: `gunicorn -c python:_42epochs.gunicorn` (what `make serve` runs).

Each worker imports the WSGI module after the fork and loads the ensemble once there;
never use --preload with torch (a model loaded before fork is shared copy-on-write by
processes that each run OpenMP thread pools, which deadlocks or crawls). Torch threads
are split between the workers so that they do not fight over the cores.

Workers are sync (one request at a time, no threads), so that ``timeout`` bounds every
request: a sync worker tells the arbiter it is alive only between requests, and one
that has been silent for ``timeout`` seconds is aborted (then killed) and replaced by a
fresh worker, which loads its own ensemble. Threaded workers keep telling it they are
alive while a request runs, so a stuck request there ran on past any timeout. The
timeout also bounds a worker's start (loading the ensemble takes a few seconds), and
sync workers should sit behind a buffering proxy (nginx) when clients are slow.

The aborted worker ends at once (``worker_abort``): gunicorn's own abort raises
SystemExit in the request, which django-tasks' immediate backend records as a failed
task and swallows, so the request went on to answer 202 "running" for an analysis that
no process was running any more. The client now sees the connection close; the row and
any files it left are the reaper's (abandoned analyses are marked failed).

A request gunicorn cannot parse (a malformed Content-Length, a bad request line) never
reaches Django, so gunicorn answers it itself: in JSON here (``post_worker_init``), like
every other error of the API, since the path it was meant for may not even be known.
"""

import json
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
threads = 1  # more would make gunicorn switch to threaded workers, which ignore the timeout
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))  # seconds; a 300-slice study in the request
graceful_timeout = 30
preload_app = False
wsgi_app = "_42epochs.wsgi:application"
accesslog = "-"
os.environ.setdefault("SEGMENTER_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


def worker_abort(worker):
    """A request ran past the timeout (gunicorn sent SIGABRT): exit now, see above."""
    worker.log.critical("a request ran past the %s s timeout; worker %s exits", timeout, worker.pid)
    os._exit(1)


def _write_json_error(sock, status_int, reason, mesg):
    """gunicorn.util.write_error, answering {"error": ...} instead of an HTML page."""
    from gunicorn import util

    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    util.write_nonblock(sock, head + body)


def post_worker_init(worker):
    """Requests gunicorn itself refuses are answered in JSON (see above)."""
    from gunicorn import util

    util.write_error = _write_json_error
