"""Background tasks (django-tasks): with the immediate backend they run in the request."""

from django_tasks import task

from . import services


@task()
def process_analysis(analysis_id: str) -> None:
    services.analysis_process(analysis_id=analysis_id)
