"""Background tasks (django-tasks): run by a worker (``manage.py worker``).

With the immediate backend, ``services.analysis_create`` processes an upload in the
request itself, with the slices it has just read, instead of enqueueing this task.
"""

from django_tasks import task

from . import processing, reaper


@task()
def process_analysis(analysis_id: str) -> str:
    """Process one queued analysis; returns its processing.Outcome. A run that lost its
    lease raises LeaseLost, so that its task row, too, ends failed."""
    reaper.abandoned_reap_if_due()
    outcome = processing.analysis_process(analysis_id=analysis_id)
    if outcome == processing.Outcome.LEASE_LOST:
        raise processing.LeaseLost(
            f"analysis {analysis_id}: the lease expired or the analysis was failed meanwhile"
        )
    return outcome.value
