"""The server-drawn plot of lesion share along a study."""

from __future__ import annotations

import re

from segmenter.templatetags.segmenter_tags import PLOT_MARGIN, grade_css, percent, plot_geometry, sides


def _f(text: str) -> float:
    assert re.fullmatch(r"-?\d+(\.\d+)?", text), text  # SVG numbers: never a decimal comma
    return float(text)


def test_each_bar_stacks_consolidation_on_ggo_to_the_lesion_share():
    plot = plot_geometry([(10.0, 5.0), (40.0, 20.0)])
    bottom, top = plot["bottom"], plot["top"]
    scale = (bottom - top) / 100  # the highest bar (60 %) needs the 0-100 % axis
    first = plot["bars"][0]
    assert abs(_f(first["ggo_h"]) - 10 * scale) < 0.01
    assert abs(_f(first["cons_h"]) - 5 * scale) < 0.01
    assert abs(_f(first["cons_y"]) + _f(first["cons_h"]) - _f(first["ggo_y"])) < 0.02
    assert abs(_f(first["ggo_y"]) + _f(first["ggo_h"]) - bottom) < 0.01


def test_the_axis_grows_to_hold_the_highest_bar():
    assert [t["label"] for t in plot_geometry([(3.0, 1.0)])["y_ticks"]] == [0, 1, 2, 3, 4, 5]
    assert plot_geometry([(20.0, 4.0)])["y_ticks"][-1]["label"] == 25
    assert plot_geometry([(60.0, 30.0)])["y_ticks"][-1]["label"] == 100
    assert [b["label"] for b in plot_geometry([(60.0, 30.0)])["boundaries"]] == ["CT-1 | CT-2", "CT-2 | CT-3", "CT-3 | CT-4"]
    assert plot_geometry([(3.0, 1.0)])["boundaries"] == []


def test_a_slice_without_lung_gets_a_marker_not_a_bar():
    bar = plot_geometry([None, (1.0, 1.0)])["bars"][0]
    assert bar["point"] is None and "ggo_h" not in bar


def test_bars_spread_evenly_inside_the_plot_area():
    plot = plot_geometry([(1.0, 0.0)] * 4)
    centres = [_f(b["cx"]) for b in plot["bars"]]
    gaps = {round(b - a, 6) for a, b in zip(centres, centres[1:])}
    assert len(gaps) == 1
    assert centres[0] > PLOT_MARGIN["left"] and centres[-1] < plot["right"]


def test_a_long_study_labels_only_some_slices():
    plot = plot_geometry([(1.0, 1.0)] * 300)
    labels = [t["label"] for t in plot["x_ticks"]]
    assert labels[:3] == [1, 50, 100] and labels[-1] == 300 and len(labels) <= 13


def test_percentages_show_one_decimal_or_a_dash():
    assert percent(12.345) == "12.3\xa0%"
    assert percent(0.05) == "0.1\xa0%"
    assert percent(None) == "\u2014"


def test_grades_get_a_css_class_each():
    assert [grade_css(g) for g in ("CT-0", "CT-4", None, "XX")] == ["grade-0", "grade-4", "grade-none", "grade-none"]


def test_sides_are_shown_only_when_both_are_known():
    right, left = {"lesion_percent": 10.0, "grade": "CT-1"}, {"lesion_percent": 0.0, "grade": "CT-0"}
    assert sides({"right": right, "left": left}) == {"right": right, "left": left}
    assert sides({"right": {"lesion_percent": None, "grade": None}, "left": left}) is None
    assert sides({"right": None, "left": None}) is None
    assert sides(None) is None
