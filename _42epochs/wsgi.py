"""WSGI entry point. Loading it starts a serving process, which loads the ensemble once."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "_42epochs.settings")

application = get_wsgi_application()

# After get_*_application(): these need configured settings.
from segmenter.checks import require_secret_key
from segmenter.engine import warm_up

require_secret_key()
warm_up()
