"""Background tasks (django-tasks): run by a worker (``manage.py worker``).

With the immediate backend, ``services.analysis_create`` processes an upload in the
request itself, with the slices it has just read, instead of enqueueing this task.
"""

from django_tasks import task

from . import processing, reaper
from .models import Analysis


@task()
def process_analysis(analysis_id: str) -> str:
    """Process one queued analysis; returns its processing.Outcome. A run that lost its
    lease settles the analysis if nobody has (queued again while it has runs left: see
    reaper.analysis_mark_stale) and raises LeaseLost, so that its task row ends failed."""
    reaper.abandoned_reap_if_due()
    outcome = processing.analysis_process(analysis_id=analysis_id)
    if outcome == processing.Outcome.LEASE_LOST:
        # Queued again (or failed) now, if nobody else settled it meanwhile.
        stale = Analysis.objects.filter(pk=analysis_id).first()
        if stale is not None:
            reaper.analysis_mark_stale(analysis=stale)
        raise processing.LeaseLost(
            f"analysis {analysis_id}: the lease expired or the analysis was failed meanwhile"
        )
    return outcome.value
