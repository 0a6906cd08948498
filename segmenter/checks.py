"""System checks for configuration problems (run by `manage.py check` and at start-up)."""

from __future__ import annotations

import os

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from .ml.model.weights import WeightsError, read_manifest


@register()
def weights_present(app_configs, **kwargs):
    if settings.SEGMENTER_ENGINE != "segmenter.engine.load_ensemble":
        return []
    try:
        read_manifest(settings.SEGMENTER_WEIGHTS_DIR)
    except WeightsError as exc:
        return [Error(str(exc), hint="Set SEGMENTER_WEIGHTS_DIR to the folder holding manifest.json.", id="segmenter.E001")]
    return []


@register()
def media_root_writable(app_configs, **kwargs):
    if settings.STORAGES["default"]["BACKEND"] != "django.core.files.storage.FileSystemStorage":
        return []
    root = settings.MEDIA_ROOT
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        return [Error(f"{root} is not writable", hint="Set DJANGO_MEDIA_ROOT to a writable folder.", id="segmenter.E002")]
    return []


@register()
def upload_limits(app_configs, **kwargs):
    if settings.SEGMENTER_MAX_UPLOAD_BYTES <= 0:
        return [Error("SEGMENTER_MAX_UPLOAD_MB must be positive", id="segmenter.E003")]
    if settings.SEGMENTER_MAX_UPLOAD_BYTES > 4 * 1024**3:
        return [Warning("uploads over 4 GB are allowed; is that intended?", id="segmenter.W001")]
    return []


def require_secret_key() -> None:
    """Refuse to serve without a secret key (called by the WSGI and ASGI entry points).

    Outside debug the settings give no default key, so that a deployment cannot run on a
    published one; commands that sign nothing work without it, a serving process does not.
    """
    try:
        settings.SECRET_KEY  # noqa: B018 - Django refuses an empty key when it is read
    except ImproperlyConfigured:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set to serve with DJANGO_DEBUG off (DJANGO_DEBUG=1 for local development)"
        ) from None


@register()
def libarchive_present(app_configs, **kwargs):
    """RAR, 7z and tar uploads are read by the system's libarchive, through libarchive-c."""
    try:
        import libarchive.ffi  # noqa: F401
    except (ImportError, OSError, AttributeError) as exc:
        return [
            Error(
                f"libarchive cannot be loaded ({exc}); RAR, 7z and tar uploads would fail",
                hint="apt-get install libarchive13, then pip install -r requirements.txt.",
                id="segmenter.E004",
            )
        ]
    return []
