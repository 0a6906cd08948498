"""python manage.py dicom_listener

The app as a DICOM node (segmenter.dimse): accepts C-ECHO and C-STORE from the peers in
SEGMENTER_DICOM_PEERS on SEGMENTER_DICOM_HOST:SEGMENTER_DICOM_PORT as
SEGMENTER_DICOM_AE_TITLE; analyses each series once nothing new has arrived for
SEGMENTER_DICOM_QUIET_SECONDS and sends its DICOM SEG and SR to
SEGMENTER_DICOM_DESTINATION. Runs until stopped (Ctrl+C, SIGTERM).
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = __doc__.split("\n\n")[0]

    def add_arguments(self, parser):
        parser.add_argument(
            "--port", type=int, default=None, help="listen here instead of SEGMENTER_DICOM_PORT"
        )

    def handle(self, *args, port: int | None, **options):
        from django.db import close_old_connections

        from segmenter.dimse import Listener
        from segmenter.ml.results.reports import DISCLAIMER

        try:
            listener = Listener(port=port)
        except ValueError as exc:
            raise CommandError(f"SEGMENTER_DICOM_PEERS: {exc}") from exc
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        listener.start()
        self.stderr.write(DISCLAIMER)
        self.stdout.write(f"listening as {listener.aet} on {listener.host}:{listener.port}")
        try:
            while not stop.wait(1.0):
                for analysis in listener.process_due():
                    close_old_connections()
                    if analysis is not None:
                        sent = "sent" if analysis.pacs_sent else f"not sent: {analysis.pacs_error}"
                        self.stdout.write(
                            f"{analysis.source_name}: {analysis.status} {analysis.error} ({sent})"
                        )
        except KeyboardInterrupt:
            pass
        finally:
            listener.stop()
