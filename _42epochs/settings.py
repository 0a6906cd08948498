"""Django settings, all from the environment, with safe defaults for local use.

Variables (see .env.example): DJANGO_DEBUG (off unless 1), DJANGO_SECRET_KEY (required to
serve when debug is off), DJANGO_ALLOWED_HOSTS, DJANGO_CSRF_TRUSTED_ORIGINS,
DJANGO_SECURE_COOKIES, DATABASE_URL, DJANGO_MEDIA_ROOT, DJANGO_STORAGE_S3_BUCKET,
DJANGO_STORAGE_S3_ENDPOINT_URL, DJANGO_TASKS_BACKEND, SEGMENTER_MAX_UPLOAD_MB,
SEGMENTER_MAX_ATTEMPTS, SEGMENTER_WEIGHTS_DIR, SEGMENTER_THREADS.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def env_str(name: str, default: str) -> str:
    """The variable's value; unset and empty both mean the default."""
    return os.environ.get(name) or default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# --- Core ---------------------------------------------------------------------------------
# Debug (traceback pages, the built-in development key) only when asked for: DJANGO_DEBUG=1,
# which `make run` sets. Without debug there is no default secret key: commands that sign
# nothing (migrate, collectstatic, segment, db_worker) run without one, and a serving
# process refuses to start without one (segmenter.checks.require_secret_key).
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "")
if not SECRET_KEY and DEBUG:
    SECRET_KEY = "insecure-local-development-key-do-not-deploy"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_tasks",
    "django_tasks_db",
    "segmenter",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "segmenter.middleware.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "segmenter.middleware.ApiOriginMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "_42epochs.urls"
WSGI_APPLICATION = "_42epochs.wsgi.application"
ASGI_APPLICATION = "_42epochs.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.messages.context_processors.messages",
                "segmenter.context_processors.segmenter",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
# Embedded SQLite by default; PostgreSQL (or anything dj-database-url reads) via DATABASE_URL.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DJANGO_DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and immediate transactions let the web process and a db_worker write side by side.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            # WAL with synchronous=NORMAL: never corrupt, no fsync on every commit.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Files --------------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env_str("DJANGO_MEDIA_ROOT", str(BASE_DIR / "media")))
# No URL pattern serves MEDIA_URL: views stream results after looking up the UUID. (It
# must still be a path: Django's live test server wraps it.)
MEDIA_URL = "/media-not-served/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env_bool("DJANGO_STATIC_MANIFEST", False)
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# Object storage: django-storages' S3 backend, for every file of every analysis (uploads
# waiting for a worker included), when DJANGO_STORAGE_S3_BUCKET names a bucket; any
# S3-compatible server through DJANGO_STORAGE_S3_ENDPOINT_URL. Credentials and region
# come the boto3 way (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or an
# instance role). Files are never overwritten (as on a disk: a second save of a name gets
# another name), never public, and always streamed through the views.
STORAGE_S3_BUCKET = env_str("DJANGO_STORAGE_S3_BUCKET", "")
if STORAGE_S3_BUCKET:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": STORAGE_S3_BUCKET,
            "endpoint_url": env_str("DJANGO_STORAGE_S3_ENDPOINT_URL", "") or None,
            "file_overwrite": False,
            "default_acl": None,
            "querystring_auth": True,
        },
    }

# --- Uploads ------------------------------------------------------------------------------
SEGMENTER_MAX_UPLOAD_BYTES = env_int("SEGMENTER_MAX_UPLOAD_MB", 512) * 1024 * 1024
# Zip studies: limits checked on the archive's directory before anything is unpacked.
SEGMENTER_ZIP_MAX_MEMBERS = env_int("SEGMENTER_ZIP_MAX_MEMBERS", 2000)
SEGMENTER_ZIP_MAX_MEMBER_MB = env_int("SEGMENTER_ZIP_MAX_MEMBER_MB", 64)
SEGMENTER_ZIP_MAX_TOTAL_MB = env_int("SEGMENTER_ZIP_MAX_TOTAL_MB", 2048)
SEGMENTER_MAX_SLICES = env_int("SEGMENTER_MAX_SLICES", 1000)
# Decoded pixels one upload may hold, all its slices together, in millions; checked from
# each file's header before it is decoded (segmenter.ml.io.headers.PixelBudget).
SEGMENTER_MAX_DECODED_PIXELS = env_int("SEGMENTER_MAX_DECODED_MPIXELS", 300) * 1_000_000
# Bodies above this go to a per-request temporary file rather than memory, named in ASCII
# whatever the upload is called (segmenter/uploadhandlers.py).
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
FILE_UPLOAD_HANDLERS = [
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "segmenter.uploadhandlers.TemporaryFileUploadHandler",
]

# --- Engine -------------------------------------------------------------------------------
SEGMENTER_WEIGHTS_DIR = Path(env_str("SEGMENTER_WEIGHTS_DIR", str(BASE_DIR / "weights")))
# Dotted path of a callable returning the segmenter (anything with .segment()); tests swap it.
SEGMENTER_ENGINE = env_str("SEGMENTER_ENGINE", "segmenter.engine.load_ensemble")
SEGMENTER_THREADS = env_int("SEGMENTER_THREADS", 0)  # torch intra-op threads; 0: torch's default
# The lease of a worker on a running analysis: a worker that has not reported for this
# long has lost it (it can no longer write the analysis, which then reads as failed).
SEGMENTER_STALE_AFTER_SECONDS = env_int("SEGMENTER_STALE_AFTER_SECONDS", 300)
# Runs an analysis gets: one whose worker stopped (its lease expired) is queued again,
# its upload kept, until this many runs have claimed it; then it fails.
SEGMENTER_MAX_ATTEMPTS = env_int("SEGMENTER_MAX_ATTEMPTS", 3)
# How often each worker (and each process that runs tasks) reaps abandoned work.
SEGMENTER_REAP_EVERY_SECONDS = env_int("SEGMENTER_REAP_EVERY_SECONDS", 60)

# --- PACS (DICOMweb) ----------------------------------------------------------------------
# The DICOMweb root of the hospital's PACS (e.g. http://pacs:8042/dicom-web): the only server
# the API and the web pages read from and send to; the command line reads any address it is
# given. Credentials come only from here: basic auth, or a bearer token.
SEGMENTER_DICOMWEB_URL = env_str("SEGMENTER_DICOMWEB_URL", "").rstrip("/")
SEGMENTER_DICOMWEB_USER = env_str("SEGMENTER_DICOMWEB_USER", "")
SEGMENTER_DICOMWEB_PASSWORD = env_str("SEGMENTER_DICOMWEB_PASSWORD", "")
SEGMENTER_DICOMWEB_TOKEN = env_str("SEGMENTER_DICOMWEB_TOKEN", "")
# Seconds to wait for the server to connect and for each read of its answer.
SEGMENTER_DICOMWEB_TIMEOUT = env_int("SEGMENTER_DICOMWEB_TIMEOUT", 30)
# Send every analysis of a PACS series back to it (SEG and SR) without being asked.
SEGMENTER_DICOMWEB_SEND_ALWAYS = env_bool("SEGMENTER_DICOMWEB_SEND_ALWAYS", False)

# The DICOM node (manage.py dicom_listener): its AE title, the address it listens on, the
# peers (modalities, PACS) allowed to send to it as AET@host:port, comma-separated, how long
# a series must be quiet to count as complete, and where results go: "dicomweb" (STOW-RS to
# SEGMENTER_DICOMWEB_URL) or AET@host:port (C-STORE).
SEGMENTER_DICOM_AE_TITLE = env_str("SEGMENTER_DICOM_AE_TITLE", "EPOCHS42")
SEGMENTER_DICOM_HOST = env_str("SEGMENTER_DICOM_HOST", "127.0.0.1")
SEGMENTER_DICOM_PORT = env_int("SEGMENTER_DICOM_PORT", 11112)
SEGMENTER_DICOM_PEERS = env_list("SEGMENTER_DICOM_PEERS", [])
SEGMENTER_DICOM_QUIET_SECONDS = env_int("SEGMENTER_DICOM_QUIET_SECONDS", 30)
SEGMENTER_DICOM_DESTINATION = env_str("SEGMENTER_DICOM_DESTINATION", "dicomweb")

# --- Background tasks ---------------------------------------------------------------------
# The immediate backend runs each analysis inside its request (nothing else to start);
# django_tasks_db.DatabaseBackend queues it for `python manage.py db_worker`.
TASKS = {
    "default": {
        "BACKEND": env_str("DJANGO_TASKS_BACKEND", "django_tasks.backends.immediate.ImmediateBackend"),
    }
}

# --- API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "segmenter.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "42-EPOCHS API",
    "DESCRIPTION": "Lung-damage segmentation of chest CT. For research and demonstration only; not for diagnosis.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Internationalisation -----------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("ru", _("Russian"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
USE_TZ = True

# --- Security -----------------------------------------------------------------------------
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Behind HTTPS (a TLS-terminating proxy): Secure cookies and HSTS. HSTS is sent on
# requests Django sees as secure, so the proxy must say so (DJANGO_TRUST_X_FORWARDED_PROTO=1
# when it sets X-Forwarded-Proto and drops any a client sent).
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 365 * 24 * 3600) if SESSION_COOKIE_SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = False
if env_bool("DJANGO_TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The API refuses browser requests from other sites' pages; CSRF_TRUSTED_ORIGINS (above)
# are the other origins whose pages may use it (segmenter.middleware.ApiOriginMiddleware).
# A CSRF failure under /api/ answers JSON.
CSRF_FAILURE_VIEW = "segmenter.errors.csrf_failure"
# Content-Security-Policy (segmenter.middleware.SecurityHeadersMiddleware, in the format of
# Django 6's SECURE_CSP): scripts, styles, images and requests from this site only, no
# inline script or style (data reach scripts through json_script), no framing, no plugins.
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'"],
    "connect-src": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'none'"],
    "object-src": ["'none'"],
}
# Browser features no page of the site uses, refused to it and to anything it embeds.
PERMISSIONS_POLICY = dict.fromkeys(
    ["accelerometer", "bluetooth", "camera", "display-capture", "geolocation", "gyroscope", "magnetometer",
     "microphone", "payment", "serial", "usb"],
    (),
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "INFO")},
}
