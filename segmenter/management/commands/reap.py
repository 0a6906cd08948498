"""manage.py reap: clean up after workers that stopped, once, and say what was cleaned."""

from django.core.management.base import BaseCommand

from segmenter import reaper


class Command(BaseCommand):
    help = (
        "Mark running analyses whose worker lease expired as failed and remove their files; fail task rows "
        "left running for them; delete spooled uploads older than SEGMENTER_STALE_AFTER_SECONDS."
    )

    def handle(self, *args, **options) -> None:
        reaped = reaper.abandoned_reap()
        for line in (*reaped.analyses, *reaped.task_rows, *reaped.temp_uploads):
            self.stdout.write(line)
        self.stdout.write(
            f"reaped {len(reaped.analyses)} analyses, {len(reaped.task_rows)} task rows, "
            f"{len(reaped.temp_uploads)} temporary uploads"
        )
