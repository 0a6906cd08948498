"""The layer settings of the slice page and the overlay download's query."""

from __future__ import annotations

import pytest
from django.http import QueryDict
from hypothesis import given
from hypothesis import strategies as st

from segmenter.forms import LAYER_LABELS, overlay_query, overlay_styles, page_styles
from segmenter.ml.results.overlay import DEFAULT_STYLES, LAYERS, LayerStyle

colours = st.from_regex(r"#[0-9a-f]{6}", fullmatch=True)
opacities = st.integers(0, 100).map(lambda k: k / 100)
styles = st.builds(LayerStyle, st.booleans(), colours, opacities)


def test_every_layer_has_a_label():
    assert list(LAYER_LABELS) == list(LAYERS)


@given(st.fixed_dictionaries({name: styles for name in LAYERS}), st.booleans())
def test_the_overlay_query_reads_back_as_written(chosen, mask_only):
    assert overlay_styles(QueryDict(overlay_query(chosen, mask_only))) == (chosen, mask_only)


def test_the_overlay_query_keeps_defaults_for_unnamed_layers():
    chosen, mask_only = overlay_styles(QueryDict("consolidation=00ff00"))
    assert chosen["ggo"] == DEFAULT_STYLES["ggo"]
    assert chosen["consolidation"] == LayerStyle(True, "#00ff00", DEFAULT_STYLES["consolidation"].opacity)
    assert mask_only is False


@pytest.mark.parametrize("query", ["ggo=12345", "ggo=ff0000,1.5", "ggo=ff0000,0.5,2", "mask=true", "other_lung=,x"])
def test_the_overlay_query_refuses_malformed_values(query):
    with pytest.raises(ValueError):
        overlay_styles(QueryDict(query))


def test_the_page_shows_the_defaults_until_the_layer_form_is_sent():
    assert page_styles(QueryDict("ggo_colour=%23000000")) == (DEFAULT_STYLES, False)


def test_the_page_reads_the_layer_form_and_treats_missing_boxes_as_unticked():
    query = QueryDict(
        "layers=1&ggo_colour=%2300FF00&ggo_opacity=0.4&consolidation_visible=on&consolidation_colour=%23ff3b30"
        "&consolidation_opacity=1&other_lung_colour=%232f80ed&other_lung_opacity=0&mask=on"
    )
    chosen, mask_only = page_styles(query)
    assert chosen == {
        "ggo": LayerStyle(False, "#00ff00", 0.4),
        "consolidation": LayerStyle(True, "#ff3b30", 1.0),
        "other_lung": LayerStyle(False, "#2f80ed", 0.0),
    }
    assert mask_only is True


def test_the_page_falls_back_to_the_defaults_on_a_bad_layer_form():
    assert page_styles(QueryDict("layers=1&ggo_colour=red")) == (DEFAULT_STYLES, False)
