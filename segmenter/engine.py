"""The one segmenter of a process, loaded once and shared by every request thread.

Serving processes (``_42epochs/wsgi.py`` and ``asgi.py``) call ``warm_up()`` when they
start, so the first upload does not wait for the weights; other processes (a db_worker,
a management command) load it on first use. Which callable builds it is the setting
``SEGMENTER_ENGINE`` -- the one seam tests use to put in a stand-in.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.utils.module_loading import import_string

log = logging.getLogger(__name__)

_lock = threading.Lock()
_segmenter = None
_engine_path: str | None = None


def load_ensemble():
    """The default engine: the shipped ensemble, hash-checked, on the CPU."""
    import torch

    from .ml.model.ensemble import Ensemble

    if settings.SEGMENTER_THREADS:
        torch.set_num_threads(settings.SEGMENTER_THREADS)
    return Ensemble.load(settings.SEGMENTER_WEIGHTS_DIR)


def get_segmenter():
    """The process' segmenter (built on first call by settings.SEGMENTER_ENGINE)."""
    global _segmenter, _engine_path
    path = settings.SEGMENTER_ENGINE
    if _segmenter is None or _engine_path != path:
        with _lock:
            if _segmenter is None or _engine_path != path:
                log.info("loading segmenter %s", path)
                _segmenter = import_string(path)()
                _engine_path = path
    return _segmenter


def warm_up() -> None:
    """Load the segmenter now (called once by each serving process at start-up)."""
    get_segmenter()


def reset() -> None:
    """Forget the loaded segmenter (tests)."""
    global _segmenter, _engine_path
    with _lock:
        _segmenter, _engine_path = None, None
