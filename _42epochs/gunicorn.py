"""gunicorn settings: `gunicorn -c python:_42epochs.gunicorn` (what `make serve` runs).

Each worker imports the WSGI module after the fork and loads the ensemble once there;
never use --preload with torch (a model loaded before fork is shared copy-on-write by
processes that each run OpenMP thread pools, which deadlocks or crawls). Torch threads
are split between the workers so that they do not fight over the cores.
"""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))  # requests waiting on the ensemble's lock
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))  # a 300-slice study in the request
preload_app = False
wsgi_app = "_42epochs.wsgi:application"
accesslog = "-"
os.environ.setdefault("SEGMENTER_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
