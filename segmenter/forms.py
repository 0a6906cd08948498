"""Forms: the upload, and the layer controls of a slice page.

Layer styles travel in two shapes. The slice page's controls submit one field per
setting (``ggo_visible``, ``ggo_colour``, ``ggo_opacity``, ..., ``mask``), so the page
works without JavaScript; the overlay download takes the compact query of
``ml.overlay.parse_style`` (``?ggo=rrggbb,opacity,visible&...&mask=0|1``), which
``overlay_query`` writes and ``overlay_styles`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from .ml.results.overlay import DEFAULT_STYLES, LAYERS, LayerStyle, parse_colour, parse_style

#: The layers as people read them, in display order.
LAYER_LABELS = {
    "ggo": _("Ground-glass opacity"),
    "consolidation": _("Consolidation"),
    "other_lung": _("Other lung"),
}


class UploadForm(forms.Form):
    file = forms.FileField(
        label=_("CT file"),
        # An empty file is refused by uploads.upload_read, with the same message everywhere.
        allow_empty_file=True,
        error_messages={
            "required": _("Choose a file to upload."),
            "missing": _("Choose a file to upload."),
            "invalid": _("No file arrived; choose a file and send the form again."),
        },
    )


class LayerForm(forms.Form):
    """The slice page's layer controls, read from its query string."""

    mask = forms.BooleanField(required=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in LAYERS:
            self.fields[f"{name}_visible"] = forms.BooleanField(required=False)
            self.fields[f"{name}_colour"] = forms.CharField(max_length=7, validators=[_valid_colour])
            self.fields[f"{name}_opacity"] = forms.FloatField(min_value=0.0, max_value=1.0)

    def styles(self) -> dict[str, LayerStyle]:
        data = self.cleaned_data
        return {
            name: LayerStyle(data[f"{name}_visible"], parse_colour(data[f"{name}_colour"]), data[f"{name}_opacity"])
            for name in LAYERS
        }


def _valid_colour(value: str) -> None:
    try:
        parse_colour(value)
    except ValueError:
        raise ValidationError(_("Enter a colour as #rrggbb.")) from None


def page_styles(query: Mapping[str, str]) -> tuple[dict[str, LayerStyle], bool]:
    """(styles, mask only) chosen with a slice page's controls; the defaults when the
    controls were not submitted (no ``layers`` field) or hold invalid values."""
    if "layers" not in query:
        return dict(DEFAULT_STYLES), False
    form = LayerForm(query)
    if not form.is_valid():
        return dict(DEFAULT_STYLES), False
    return form.styles(), form.cleaned_data["mask"]


def overlay_styles(query: Mapping[str, str]) -> tuple[dict[str, LayerStyle], bool]:
    """(styles, mask only) from an overlay download's query; a layer that is not named
    keeps its default style. Raises ValueError on any malformed value."""
    styles = {}
    for name, default in DEFAULT_STYLES.items():
        text = query.get(name)
        styles[name] = default if text is None else parse_style(text, default)
    mask = query.get("mask", "0")
    if mask not in ("0", "1"):
        raise ValueError(f"mask {mask!r} is not 0 or 1")
    return styles, mask == "1"


def overlay_query(styles: Mapping[str, LayerStyle], mask_only: bool) -> str:
    """The overlay download's query string (no leading '?') for these choices."""
    parts = {
        name: f"{style.colour.lstrip('#')},{style.opacity:g},{int(style.visible)}" for name, style in styles.items()
    }
    parts["mask"] = "1" if mask_only else "0"
    return urlencode(parts, safe=",")
