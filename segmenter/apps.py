from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SegmenterConfig(AppConfig):
    name = "segmenter"
    verbose_name = _("Lung-damage segmenter")

    def ready(self) -> None:
        # Registers the system checks; nothing is loaded here (the ensemble loads when a
        # serving process starts, see segmenter.engine.warm_up).
        from . import checks  # noqa: F401
