"""The stack viewer in a real browser: moving through slices, zoom and pan, window/level
on a DICOM study, outlines, and the pages at a phone's width. With SCREENSHOTS=1 the
tests also write docs/viewer.png (1280 px) and docs/viewer-390.png (390 px)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmenter.ml.constants import CONSOLIDATION, GGO
from segmenter.ml.io.imaging import read_slice, window
from segmenter.models import Analysis

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).resolve().parents[2] / "docs"
LUNG_WINDOW = (1500, -600)
MEDIASTINUM_WINDOW = (350, 40)


def _upload(page, name: str, data: bytes) -> None:
    page.goto(page.base_url + "/")
    page.set_input_files("#id_file", files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])
    page.get_by_role("button", name="Analyse").click()


def _study(page, samples, members: dict[str, bytes]) -> Analysis:
    """Upload a zip of these slices and wait for the study page's viewer."""
    _upload(page, "study.zip", samples.zip(members))
    page.wait_for_url(re.compile(r"/a/[0-9a-f-]{36}/$"))
    page.wait_for_selector("#overlay-figure[data-ready='true']")
    return Analysis.objects.get()


def _shown(page, index: int) -> None:
    page.wait_for_selector(f"#viewer[data-shown='{index}']")


def _geometry(page) -> dict:
    return page.evaluate(
        "() => { const d = document.getElementById('overlay-canvas').dataset;"
        " return {scale: +d.scale, left: +d.left, top: +d.top, zoom: +d.zoom, panX: +d.panX, panY: +d.panY, view: d.view}; }"
    )


def _pixel(page, x: int, y: int) -> tuple[int, int, int]:
    """The canvas pixel showing the centre of the segmentation pane's image pixel (x, y)."""
    g = _geometry(page)
    cx, cy = int(g["left"] + (x + 0.5) * g["scale"]), int(g["top"] + (y + 0.5) * g["scale"])
    rgba = page.evaluate(
        "([x, y]) => Array.from(document.getElementById('overlay-canvas').getContext('2d').getImageData(x, y, 1, 1).data)",
        [cx, cy],
    )
    return tuple(rgba[:3])


def _arrays(slice_) -> tuple[np.ndarray, np.ndarray]:
    with slice_.image.open("rb") as fh:
        grey = np.asarray(Image.open(fh))
    with slice_.labels.open("rb") as fh:
        labels = np.asarray(Image.open(fh))
    return grey, labels


def _core(labels: np.ndarray, cls: int, margin: int = 2) -> tuple[int, int]:
    """(x, y) of a pixel of this class at least ``margin`` pixels inside its region."""
    where = labels == cls
    core = where.copy()
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            core &= np.roll(np.roll(where, dy, axis=0), dx, axis=1)
    ys, xs = np.nonzero(core)
    k = len(ys) // 2
    return int(xs[k]), int(ys[k])


def _edge(labels: np.ndarray, cls: int) -> tuple[int, int]:
    """(x, y) of a pixel of this class with a 4-neighbour of another class, away from the
    image's border, whose 8 neighbours of the same class... any edge pixel will do."""
    where = labels == cls
    inner = where[1:-1, 1:-1]
    edge = inner & ~(where[:-2, 1:-1] & where[2:, 1:-1] & where[1:-1, :-2] & where[1:-1, 2:])
    ys, xs = np.nonzero(edge)
    k = len(ys) // 2
    return int(xs[k]) + 1, int(ys[k]) + 1


def _screenshot(page, name: str) -> None:
    if os.environ.get("SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / name))


def test_arrow_keys_and_the_wheel_move_through_the_study_and_the_address_follows(page, samples):
    _study(page, samples, {f"case/{k}.jpg": samples.jpeg(k) for k in (1, 2, 3, 4)})
    _shown(page, 1)
    position = page.locator("#viewer-position")
    assert position.inner_text() == "slice 1 / 4"
    assert position.get_attribute("aria-live") == "polite"
    canvas = page.get_by_role("application", name="The slice with the segmented layers in colour")
    canvas.click()
    assert page.evaluate("() => document.activeElement.id") == "overlay-canvas"

    page.keyboard.press("ArrowDown")
    _shown(page, 2)
    assert page.url.endswith("#slice=2")
    assert position.inner_text() == "slice 2 / 4"
    page.keyboard.press("ArrowDown")
    _shown(page, 3)
    page.keyboard.press("ArrowUp")
    _shown(page, 2)
    page.keyboard.press("End")
    _shown(page, 4)
    assert page.url.endswith("#slice=4")

    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -100)  # one notch up: the previous slice
    _shown(page, 3)
    assert page.url.endswith("#slice=3")
    assert page.locator("#viewer-slider").input_value() == "3"
    assert page.locator("#viewer-open").get_attribute("href").endswith("/slices/3/")

    page.locator("#viewer-slider").fill("1")  # the slider too
    _shown(page, 1)

    page.goto(page.url.split("#")[0] + "#slice=4")  # a shared address opens at its slice
    page.reload()
    _shown(page, 4)
    assert position.inner_text() == "slice 4 / 4"


def test_zoom_and_pan_change_the_view(page, samples):
    _study(page, samples, {f"case/{k}.jpg": samples.jpeg(k) for k in (1, 2)})
    _shown(page, 1)
    page.get_by_label("Single image").check()
    before = _geometry(page)
    assert before["zoom"] == 1 and before["view"] == "single"

    page.get_by_role("button", name="Zoom in").click()
    zoomed = _geometry(page)
    assert zoomed["scale"] == pytest.approx(before["scale"] * 1.25)
    assert page.locator("#viewer-zoom").inner_text() == f"zoom {round(zoomed['scale'] * 100)}\u202f%"

    canvas = page.locator("#overlay-canvas")
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 30, steps=4)
    page.mouse.up()
    panned = _geometry(page)
    assert (panned["panX"], panned["panY"]) == (60, 30)
    assert (panned["left"] - zoomed["left"], panned["top"] - zoomed["top"]) == (60, 30)
    assert panned["scale"] == zoomed["scale"]  # a drag pans, it does not move the slice
    _shown(page, 1)

    page.keyboard.down("Control")  # Ctrl + wheel zooms around the pointer
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    page.wait_for_function("(s) => +document.getElementById('overlay-canvas').dataset.scale > s", arg=panned["scale"])
    _shown(page, 1)

    page.get_by_role("button", name="Fit").click()
    assert _geometry(page)["scale"] == pytest.approx(before["scale"])


def test_a_window_preset_changes_the_pixels_of_a_dicom_slice(page, samples):
    analysis = _study(page, samples, {"a/0.dcm": samples.dicom(0), "a/1.dcm": samples.dicom(1)})
    _shown(page, 1)
    page.get_by_label("Single image").check()
    page.get_by_label("Mask only (hide the CT image)").uncheck()
    slice_ = analysis.slices.get(index=1)
    grey, labels = _arrays(slice_)
    hu = read_slice(samples.dicom(0 if slice_.name.endswith("0.dcm") else 1), "x.dcm").hu
    x, y = _core(labels, 3)  # outside the lungs: no layer over it
    assert _pixel(page, x, y) == (grey[y, x],) * 3  # the stored grey, as analysed
    assert page.locator("#window-readout").inner_text() == "W 1400 / L \u2212435"

    page.get_by_role("button", name=re.compile("^Mediastinum")).click()
    page.wait_for_selector("#viewer[data-window='350,40']")
    _shown(page, 1)
    expected = int(window(hu, *MEDIASTINUM_WINDOW)[y, x])
    assert _pixel(page, x, y) == (expected,) * 3
    assert expected != grey[y, x]
    assert page.locator("#window-readout").inner_text() == "W 350 / L 40"
    assert page.get_by_role("button", name=re.compile("^Mediastinum")).get_attribute("aria-pressed") == "true"

    # Every pixel outside the lungs matches the window applied to the stored HU.
    page.get_by_role("button", name=re.compile("^Lung")).click()
    page.wait_for_selector("#viewer[data-window='1500,-600']")
    expected = window(hu, *LUNG_WINDOW)
    for px, py in (_core(labels, 3, margin=1), (5, 5), (256, 40)):
        if labels[py, px] == 3:
            assert _pixel(page, px, py) == (int(expected[py, px]),) * 3

    # Right-drag adjusts the window from where it is: wider to the right, higher level down.
    box = page.locator("#overlay-canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down(button="right")
    page.mouse.move(cx + 25, cy + 10, steps=3)
    page.mouse.up(button="right")
    page.wait_for_selector("#viewer[data-window='1600,-560']")
    assert page.locator("#window-readout").inner_text() == "W 1600 / L \u2212560"

    page.keyboard.press("ArrowDown")  # the window stays on the next slice
    _shown(page, 2)
    assert page.locator("#viewer").get_attribute("data-window") == "1600,-560"
    page.set_viewport_size({"width": 1280, "height": 860})
    page.get_by_label("Side by side").check()
    page.get_by_role("button", name=re.compile("^Lung")).click()
    page.wait_for_selector("#viewer[data-window='1500,-600']")
    page.locator("#viewer").scroll_into_view_if_needed()
    _screenshot(page, "viewer.png")


def test_8_bit_slices_keep_their_own_grey_and_offer_no_window(page, samples):
    _study(page, samples, {f"case/{k}.jpg": samples.jpeg(k) for k in (1, 2)})
    assert page.locator("#window-controls").count() == 0


def test_outline_mode_draws_each_layers_edge_and_leaves_its_inside(page, samples):
    _upload(page, "0.dcm", samples.dicom())
    page.wait_for_url("**/slices/1/")
    page.wait_for_selector("#overlay-figure[data-ready='true']")
    grey, labels = _arrays(Analysis.objects.get().slices.get())
    inside, edge = _core(labels, GGO), _edge(labels, GGO)
    g = lambda point: int(grey[point[1], point[0]])
    page.get_by_label("Single image").check()
    page.get_by_role("button", name="Zoom in").click()  # a screen pixel per slice pixel or more
    assert _geometry(page)["scale"] >= 1
    page.locator("#ggo-outline").check()
    page.wait_for_function("() => document.getElementById('ggo-outline').checked")
    page.wait_for_timeout(100)
    assert _pixel(page, *inside) == (g(inside),) * 3  # the inside shows the CT
    assert _pixel(page, *edge) == (255, 214, 10)  # the edge in the layer's colour, in full
    cons = _core(labels, CONSOLIDATION)
    assert _pixel(page, *cons) != (g(cons),) * 3  # consolidation is still filled
    assert "ggo_draw=outline" in page.url

    page.locator("#ggo-fill").check()
    page.wait_for_timeout(100)
    assert _pixel(page, *inside) != (g(inside),) * 3


@pytest.mark.parametrize("path", ["home", "study", "slice"])
def test_at_390_px_no_page_is_wider_than_the_screen(page, samples, path):
    page.set_viewport_size({"width": 390, "height": 844})
    if path == "home":
        page.goto(page.base_url + "/")
    else:
        members = {"case/a-very-long-file-name-of-a-slice-0001.dcm": samples.dicom(0),
                   "case/a-very-long-file-name-of-a-slice-0002.jpg": samples.jpeg(2)}
        _study(page, samples, members)
        if path == "slice":
            page.goto(page.url + "slices/1/")
            page.wait_for_selector("#overlay-figure[data-ready='true']")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    wide = page.evaluate(
        "() => Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > 390.5)"
        ".map(e => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().width)} px`).slice(0, 8)"
    )
    assert width <= 390, f"the {path} page is {width} px wide: {wide}"
    if path == "study":
        # File names wrap at word-ish breaks, not a letter a line.
        name = page.get_by_role("link", name="case/a-very-long-file-name-of-a-slice-0001.dcm", exact=True)
        assert name.bounding_box()["width"] > 100
        # The plot's axis text is readable, and the grade boundary is named.
        size = page.evaluate(
            "() => { const t = document.querySelector('.lesion-plot .plot-label');"
            " return t.getBoundingClientRect().height; }"
        )
        assert size >= 10
        page.locator("#viewer").scroll_into_view_if_needed()
        _screenshot(page, "viewer-390.png")
