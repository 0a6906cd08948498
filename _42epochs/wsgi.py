"""WSGI entry point. Loading it starts a serving process, which loads the ensemble once."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "_42epochs.settings")

application = get_wsgi_application()

from segmenter.engine import warm_up  # after get_*_application(): needs configured settings

warm_up()
