"""manage.py worker: django-tasks-db's db_worker (same options), plus the reaper.

The reaper (reaper.abandoned_reap) runs once before the first task and then every
--reap-every seconds on a thread of its own, so abandoned work is cleaned up whether
the worker is idle or busy with a long study. `make worker` runs this.
"""

from __future__ import annotations

import logging
import os
import threading

from django.conf import settings
from django.db import connections
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV
from django_tasks_db.management.commands.db_worker import Command as DBWorkerCommand

from segmenter import engine, reaper

log = logging.getLogger(__name__)


class Command(DBWorkerCommand):
    help = "Run a database background worker that also reaps abandoned analyses, task rows and uploads."

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--reap-every",
            type=float,
            default=settings.SEGMENTER_REAP_EVERY_SECONDS,
            help="Seconds between two reaper passes (default: SEGMENTER_REAP_EVERY_SECONDS, %(default)s).",
        )

    def handle(self, *args, reap_every: float, **options) -> None:
        # With --reload the parent only restarts the child: the child, which runs tasks, reaps.
        if not options["reload"] or options["batch"] or os.environ.get(DJANGO_AUTORELOAD_ENV) == "true":
            _reap()
            threading.Thread(target=_reap_forever, args=(reap_every,), name="reaper", daemon=True).start()
            engine.warm_up()  # before the first task: a task is not held while the ensemble loads
        super().handle(*args, **options)


def _reap() -> None:
    try:
        reaper.abandoned_reap()
    except Exception:
        log.exception("the reaper failed")
    finally:
        connections.close_all()  # this thread's connections only


def _reap_forever(every: float) -> None:
    stop = threading.Event()
    while not stop.wait(max(every, 1.0)):
        _reap()
