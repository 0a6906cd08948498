"""Background tasks (django-tasks): with the immediate backend they run in the request."""

from django_tasks import task

from . import services


@task()
def process_analysis(analysis_id: str) -> str:
    """Process one queued analysis; returns its services.Outcome. A run that lost its
    lease raises LeaseLost, so that its task row, too, ends failed."""
    services.abandoned_reap_if_due()
    outcome = services.analysis_process(analysis_id=analysis_id)
    if outcome == services.Outcome.LEASE_LOST:
        raise services.LeaseLost(f"analysis {analysis_id}: the lease expired or the analysis was failed meanwhile")
    return outcome.value
