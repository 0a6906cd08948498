"""Selectors: functions that read analyses as people should see them. None of them writes.

Marking a stale analysis failed, and removing its files, is a service of its own
(``reaper.analysis_mark_stale``), run by the reaper and by the run that lost its lease.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.conf import settings

from .models import Analysis
from .processing import lease_expired, retry_allowed, stopped_message


def analysis_get(*, analysis_id) -> Analysis:
    """The analysis with this id, as people should see it (raises Analysis.DoesNotExist).

    A pure read: it writes nothing and deletes nothing. A running analysis whose lease
    has expired is returned (not saved) as the reaper will settle it: queued again (so
    ``retrying``) while it has runs left, else failed, because that is final: its run can
    no longer write it (see processing._Lease), and the reaper will record it and remove
    its files. So it is never shown as running forever nor, half done, as complete.
    """
    analysis = Analysis.objects.get(pk=analysis_id)
    if analysis.status == Analysis.Status.RUNNING and lease_expired(analysis):
        analysis.slices_done = 0
        if retry_allowed(analysis):  # the reaper will queue it again
            analysis.status, analysis.owner, analysis.heartbeat = Analysis.Status.QUEUED, "", None
            return analysis
        analysis.status = Analysis.Status.FAILED
        analysis.error = stopped_message(analysis.attempts)
        if analysis.heartbeat:
            analysis.finished = analysis.heartbeat + timedelta(seconds=settings.SEGMENTER_STALE_AFTER_SECONDS)
    return analysis


def browser_key(token: str) -> str:
    """What the database keeps of a browser's cookie token: its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def analyses_of_browser(*, browser: str, limit: int = 50) -> list[Analysis]:
    """The latest analyses uploaded from one browser (``browser_key`` of its token)."""
    if not browser:
        return []
    return list(Analysis.objects.filter(browser=browser).order_by("-created")[:limit])
