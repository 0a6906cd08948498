"""The pages in a real browser: upload, restyle layers, download, studies, languages."""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.utils import timezone
from PIL import Image

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from segmenter.models import Analysis, Slice

pytestmark = pytest.mark.e2e

GGO_DEFAULT = ((255, 214, 10), 0.55)
CONSOLIDATION_DEFAULT = ((255, 59, 48), 0.65)
OTHER_LUNG_DEFAULT = ((47, 128, 237), 0.25)


def _upload(page, name: str, data: bytes, mime: str = "application/octet-stream") -> None:
    page.goto(page.base_url + "/")
    page.set_input_files("#id_file", files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.get_by_role("button", name="Analyse").click()


def _arrays(slice_: Slice) -> tuple[np.ndarray, np.ndarray]:
    with slice_.image.open("rb") as fh:
        grey = np.asarray(Image.open(fh))
    with slice_.labels.open("rb") as fh:
        labels = np.asarray(Image.open(fh))
    return grey, labels


def _inside(labels: np.ndarray, cls: int) -> tuple[int, int]:
    """(x, y) of a pixel of this class whose neighbours are of the same class."""
    where = labels == cls
    core = where[1:-1, 1:-1] & where[:-2, 1:-1] & where[2:, 1:-1] & where[1:-1, :-2] & where[1:-1, 2:]
    ys, xs = np.nonzero(core)
    k = len(ys) // 2
    return int(xs[k]) + 1, int(ys[k]) + 1


def _canvas_rgb(page, x: int, y: int) -> tuple[int, int, int]:
    """The viewer's pixel showing the centre of the segmentation's slice pixel (x, y)."""
    rgba = page.evaluate(
        """([x, y]) => {
            const canvas = document.getElementById('overlay-canvas'), d = canvas.dataset;
            const cx = Math.floor(+d.left + (x + 0.5) * +d.scale), cy = Math.floor(+d.top + (y + 0.5) * +d.scale);
            return Array.from(canvas.getContext('2d').getImageData(cx, cy, 1, 1).data);
        }""",
        [x, y],
    )
    return tuple(rgba[:3])


def _rendered(page, fragment: str) -> None:
    """Wait for the canvas to be redrawn: the download link follows it in the same frame."""
    page.wait_for_function(
        "(fragment) => document.getElementById('download-overlay').href.includes(fragment)", arg=fragment
    )


def _blend(grey: int, colour: tuple[int, int, int], opacity: float) -> tuple[int, ...]:
    return tuple(round((1 - opacity) * grey + opacity * c) for c in colour)


def _close(actual, expected, tolerance: int = 1) -> bool:
    return all(abs(int(a) - int(e)) <= tolerance for a, e in zip(actual, expected))


def test_a_slice_upload_shows_layers_that_switch_recolour_and_download_as_shown(page, samples):
    _upload(page, "0.dcm", samples.dicom())
    page.wait_for_url("**/slices/1/")
    page.wait_for_selector("#overlay-figure[data-ready='true']")
    assert page.locator("#overlay-canvas").is_visible()
    assert page.locator("#overlay-image").is_hidden()
    # One image, at a screen pixel or more per slice pixel, so that each pixel read is the
    # slice pixel asked for (the viewer replicates pixels; it never smooths them).
    page.get_by_label("Single image").check()
    page.wait_for_selector("#overlay-canvas[data-view='single']")
    assert float(page.locator("#overlay-canvas").get_attribute("data-scale")) >= 1

    grey, labels = _arrays(Slice.objects.get())
    ggo, cons, other, outside = (_inside(labels, c) for c in (GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND))
    g = lambda point: int(grey[point[1], point[0]])
    assert _close(_canvas_rgb(page, *ggo), _blend(g(ggo), *GGO_DEFAULT))
    assert _close(_canvas_rgb(page, *cons), _blend(g(cons), *CONSOLIDATION_DEFAULT))

    page.get_by_label("Show").first.uncheck()  # the GGO layer vanishes
    _rendered(page, "ggo=ffd60a%2C0.55%2C0")
    assert _canvas_rgb(page, *ggo) == (g(ggo),) * 3
    assert _close(_canvas_rgb(page, *cons), _blend(g(cons), *CONSOLIDATION_DEFAULT))

    page.locator("#consolidation-colour").fill("#00ff00")  # green consolidation
    _rendered(page, "consolidation=00ff00%2C0.65%2C1")
    assert _close(_canvas_rgb(page, *cons), _blend(g(cons), (0, 255, 0), 0.65))
    page.locator("#consolidation-opacity").fill("1")
    _rendered(page, "consolidation=00ff00%2C1%2C1")
    assert _canvas_rgb(page, *cons) == (0, 255, 0)
    assert page.locator("#consolidation-opacity-value").inner_text().startswith("100")

    href = page.locator("#download-overlay").get_attribute("href")
    assert "ggo=ffd60a%2C0.55%2C0" in href and "consolidation=00ff00%2C1%2C1" in href
    with page.expect_download() as info:
        page.locator("#download-overlay").click()
    download = info.value
    assert download.suggested_filename == "0-overlay.png"
    with open(download.path(), "rb") as fh:
        png = np.asarray(Image.open(io.BytesIO(fh.read())))
    assert png.shape == grey.shape + (3,)
    assert (png[labels == GGO] == grey[labels == GGO][:, None]).all()  # off, as shown
    assert (png[labels == CONSOLIDATION] == (0, 255, 0)).all()
    assert _close(png[other[1], other[0]], _blend(g(other), *OTHER_LUNG_DEFAULT))
    assert (png[labels == BACKGROUND] == grey[labels == BACKGROUND][:, None]).all()

    page.get_by_label("Mask only (hide the CT image)").check()
    _rendered(page, "mask=1")
    assert _canvas_rgb(page, *outside) == (0, 0, 0)
    assert "mask=on" in page.url  # the address keeps the choices for a reload


def test_a_file_dropped_on_the_page_is_chosen_and_analysed(page, samples):
    page.goto(page.base_url + "/")
    transfer = page.evaluate_handle(
        """(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
            return transfer;
        }""",
        list(samples.png()),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    assert page.locator("#upload-chosen").inner_text() == "Selected: dropped.png"
    assert page.evaluate("() => document.getElementById('id_file').files[0].name") == "dropped.png"
    page.get_by_role("button", name="Analyse").click()
    page.wait_for_url("**/slices/1/")
    assert page.locator("h1").inner_text() == "dropped.png"


def test_a_refused_upload_shows_its_reason_without_leaving_the_page(page):
    _upload(page, "notes.txt", b"not a scan")
    error = page.locator("#upload-error")
    error.wait_for(state="visible")
    assert "are not supported" in error.inner_text()
    assert page.url == page.base_url + "/"
    assert Analysis.objects.count() == 0


def test_a_slow_upload_shows_its_progress_then_the_result(page, samples):
    study = samples.zip({f"s{k}.dcm": samples.dicom(k % 2) for k in range(4)}, zipfile.ZIP_STORED)  # ~2 MB
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(  # ~4 s of upload at 512 kB/s
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 512 * 1024},
    )
    _upload(page, "study.zip", study)
    bar = page.locator("#upload-progress")
    page.wait_for_function("() => { const v = document.getElementById('upload-progress').value; return v > 0 && v < 100; }")
    assert bar.is_visible()
    assert re.search(r"\d+\u202f%", page.locator("#upload-message").inner_text())
    page.wait_for_url(re.compile(r"/a/[0-9a-f-]{36}/$"))
    assert Analysis.objects.get().slices_total == 4


def test_a_zip_upload_opens_the_study_and_each_of_its_slices(page, samples):
    archive = samples.zip({f"case/{k}.jpg": samples.jpeg(k) for k in (1, 2, 3)})
    _upload(page, "case.zip", archive, "application/zip")
    page.wait_for_url(re.compile(r"/a/[0-9a-f-]{36}/$"))
    analysis_url = f"/a/{Analysis.objects.get().id}/"
    assert page.url.endswith(analysis_url)
    assert page.locator("h1").inner_text() == "case.zip"
    assert page.locator("svg.lesion-plot rect.bar-ggo").count() == 3
    assert page.locator("table.slice-table tbody tr").count() == 3

    page.get_by_role("link", name="case/2.jpg", exact=True).click()
    page.wait_for_url("**/slices/2/")
    assert page.locator("h1").inner_text() == "case/2.jpg"
    page.wait_for_selector("#overlay-figure[data-ready='true']")
    page.get_by_role("link", name="Next →").click()
    page.wait_for_url("**/slices/3/")
    page.get_by_role("link", name="Back to the study").click()
    page.wait_for_url(f"**{analysis_url}")


def test_the_language_switch_turns_every_page_russian(page, samples):
    page.goto(page.base_url + "/")
    page.get_by_role("button", name="Русский").click()
    page.wait_for_selector("html[lang='ru']")
    assert page.locator("h1").inner_text() == "Сегментация поражений лёгких на КТ грудной клетки"
    _upload_ru = page.get_by_role("button", name="Анализировать")
    page.set_input_files("#id_file", files=[{"name": "0.dcm", "mimeType": "application/dicom", "buffer": samples.dicom()}])
    _upload_ru.click()
    page.wait_for_url("**/slices/1/")
    assert "Матовое стекло" in page.locator("#layers-title + form").inner_text()
    assert "не для диагностики" in page.locator(".research-banner").inner_text()
    page.get_by_role("button", name="English").click()
    page.wait_for_selector("html[lang='en']")
    assert page.url.endswith("/slices/1/")


def test_the_progress_page_follows_the_analysis_live(page):
    analysis = Analysis.objects.create(
        kind="study", status="running", source_name="big.zip", slices_total=4, slices_done=1, heartbeat=timezone.now()
    )
    page.goto(f"{page.base_url}/a/{analysis.id}/")
    assert page.locator("#progress-count").inner_text() == "1 of 4 slices analysed"
    Analysis.objects.filter(pk=analysis.pk).update(slices_done=3, heartbeat=timezone.now())
    page.wait_for_function("() => document.getElementById('progress-count').textContent === '3 of 4 slices analysed'")
    assert page.locator("#progress-bar").get_attribute("value") == "3"
    Analysis.objects.filter(pk=analysis.pk).update(status="failed", error="The stand-in gave up.")
    page.wait_for_selector("text=The stand-in gave up.")
    assert page.locator("h1").inner_text() == "The analysis failed"


def test_a_slice_let_through_with_a_caution_shows_it_above_the_result(page, samples, use_engine):
    from tests.stubs import DisagreeingButSure

    use_engine(DisagreeingButSure)
    _upload(page, "disputed.png", samples.png(), "image/png")
    page.wait_for_url("**/slices/1/")
    caution = page.locator("#ct-caution")
    assert caution.is_visible()
    assert "the two networks disagree about where the lungs are" in caution.inner_text()
    assert page.locator(".grade-badge").is_visible()  # graded all the same
    if os.environ.get("SCREENSHOTS") == "1":
        page.screenshot(path=str(Path(__file__).resolve().parents[2] / "docs" / "caution.png"))
