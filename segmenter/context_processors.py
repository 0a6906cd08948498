from .ml.pipeline import DISCLAIMER


def segmenter(request):
    """Values every page needs: the disclaimer and the upload limit."""
    from django.conf import settings

    return {
        "disclaimer": DISCLAIMER,
        "max_upload_mb": settings.SEGMENTER_MAX_UPLOAD_BYTES // (1024 * 1024),
    }
