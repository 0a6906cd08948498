from django.conf import settings
from django.utils.translation import gettext_lazy as _

#: ml.results.reports.DISCLAIMER, translatable (a unit test keeps the English text the same).
DISCLAIMER = _("For research and demonstration only; not for diagnosis.")


def upload_limit_mb() -> str:
    """The upload limit in MB as people read it: '512', or '0.5' for a small test limit."""
    return f"{settings.SEGMENTER_MAX_UPLOAD_BYTES / (1024 * 1024):g}"


def segmenter(request):
    """Values every page needs: the disclaimer and the upload limit."""
    return {
        "disclaimer": DISCLAIMER,
        "max_upload_mb": settings.SEGMENTER_MAX_UPLOAD_BYTES // (1024 * 1024),
        "max_upload_size": upload_limit_mb(),
        "max_upload_bytes": settings.SEGMENTER_MAX_UPLOAD_BYTES,
        "pacs_configured": bool(settings.SEGMENTER_DICOMWEB_URL),
    }
