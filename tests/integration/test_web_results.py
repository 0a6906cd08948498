"""Result pages: a slice, a study, progress while queued or running, and failures."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from segmenter import processing
from segmenter.ml.results.reports import DISCLAIMER
from segmenter.models import Analysis
from segmenter.templatetags.segmenter_tags import GRADE_RULES
from tests import stubs

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]


def _json_script(content: str, element_id: str) -> dict:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', content, re.DOTALL)
    assert match, f"no json_script {element_id}"
    return json.loads(match.group(1))


@pytest.fixture
def study(analyse, samples) -> Analysis:
    """A three-slice study: two DICOM slices and a MedSeg JPEG, in a zip."""
    archive = samples.zip({"case/a.dcm": samples.dicom(0), "case/b.dcm": samples.dicom(1), "case/c.jpg": samples.jpeg(3)})
    return analyse("case 12.zip", archive)


# --- A slice ----------------------------------------------------------------------------


def test_a_slice_analysis_opens_its_slice_page(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    response = client.get(reverse("segmenter:analysis", args=[analysis.id]))
    assert response.status_code == 302
    assert response["Location"] == reverse("segmenter:slice", args=[analysis.id, 1])


def test_the_slice_page_shows_the_slice_beside_its_segmentation(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    image_url = reverse("segmenter:slice_image", args=[analysis.id, 1])
    overlay_url = reverse("segmenter:slice_overlay", args=[analysis.id, 1])
    assert f'<img id="slice-image" src="{image_url}" width="512" height="512"' in content
    # Without a script, the server's overlay with the default layers.
    assert f'<img id="overlay-image" src="{overlay_url}?ggo=ffd60a,0.55,1&amp;consolidation=ff3b30,0.65,1' in content
    assert '<canvas id="overlay-canvas" width="512" height="512" tabindex="0"' in content


def test_the_slice_page_shows_the_shares_the_grade_and_its_rule(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    slice_ = analysis.slices.get()
    severity = slice_.severity
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    for key in ("lesion_percent", "ggo_percent", "consolidation_percent"):
        assert f"{severity[key]:.1f}\xa0%" in content
    assert f">{severity['grade']}</p>" in content
    rule = str(GRADE_RULES[severity["grade"]])
    assert f'<p class="grade-rule">{rule[0].upper()}{rule[1:]}</p>' in content
    assert "Moscow CT-0…CT-4 scale" in content
    # what the engine does not count, from its constants (60 px of 0.7 mm: a 6 mm disc; 0.9)
    assert ("Not counted as lesions: spots under about 6 mm across, "
            "and areas the networks are nowhere 90 % sure of.") in content


def test_the_slice_page_shows_each_lungs_share_when_they_lie_side_by_side(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    severity = analysis.slices.get().severity
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    assert "Right lung" in content and "Left lung" in content
    assert f"{severity['right']['lesion_percent']:.1f}\xa0%" in content
    assert "right lung is on the image's left" in content


def test_the_slice_page_says_when_left_and_right_are_not_available(client, analyse, samples):
    analysis = analyse("0.jpg", samples.jpeg(0))  # MedSeg slices are rotated: lungs top and bottom
    assert analysis.slices.get().severity["right"]["lesion_percent"] is None
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    assert "Right and left lung shares are not available" in content
    assert "Right lung</dt>" not in content


def test_the_slice_page_says_when_no_lung_was_found(client, analyse, samples, use_engine):
    use_engine(stubs.NoLungSegmenter)
    analysis = analyse("0.dcm", samples.dicom())
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    assert "No lung was found, so there is no share and no grade." in content
    assert "no grade" in content


def test_the_slice_page_offers_a_control_set_for_each_layer(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    for name, colour in (("ggo", "#ffd60a"), ("consolidation", "#ff3b30"), ("other_lung", "#2f80ed")):
        assert f'name="{name}_visible" id="{name}-visible" checked' in content
        assert f'name="{name}_colour" id="{name}-colour" value="{colour}"' in content
        assert f'name="{name}_opacity"' in content
    assert 'name="mask" id="mask-only"' in content
    data = _json_script(content, "viewer-data")
    assert data["labelsOf"] == {"ggo": 0, "consolidation": 1, "other_lung": 2}
    assert data["urls"]["labels"].replace("{index}", "1") == reverse("segmenter:slice_labels", args=[analysis.id, 1])
    assert data["slices"] == [{"index": 1, "name": "0.dcm", "width": 512, "height": 512, "hu": True}]
    assert data["stack"] is False


def test_the_layer_form_works_without_a_script(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    query = {
        "layers": "1",
        "ggo_colour": "#00ff00",
        "ggo_opacity": "0.3",
        "consolidation_visible": "on",
        "consolidation_colour": "#ff3b30",
        "consolidation_opacity": "1",
        "other_lung_colour": "#2f80ed",
        "other_lung_opacity": "0.25",
        "mask": "on",
    }
    response = client.get(reverse("segmenter:slice", args=[analysis.id, 1]), query)
    assert response.status_code == 200
    overlay = response.context["overlay_url"]
    assert overlay.endswith("?ggo=00ff00,0.3,0&consolidation=ff3b30,1,1&other_lung=2f80ed,0.25,0&mask=1")
    content = response.content.decode()
    assert 'name="ggo_visible" id="ggo-visible">' in content  # now unchecked
    assert 'value="#00ff00"' in content


def test_the_layer_form_falls_back_to_the_defaults_on_nonsense(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    response = client.get(reverse("segmenter:slice", args=[analysis.id, 1]), {"layers": "1", "ggo_colour": "red"})
    assert response.status_code == 200
    assert "ggo=ffd60a,0.55,1" in response.context["overlay_url"]


def test_result_pages_say_they_are_not_for_diagnosis(client, analyse, samples, study):
    analysis = analyse("0.dcm", samples.dicom())
    for url in (reverse("segmenter:slice", args=[analysis.id, 1]), reverse("segmenter:analysis", args=[study.id])):
        content = client.get(url).content.decode()
        banner = re.search(r'<aside class="research-banner" role="note".*?</aside>', content, re.DOTALL)
        assert banner and DISCLAIMER in banner.group(0)
        assert content.count(DISCLAIMER) == 2  # the banner and the footer


def test_every_page_has_the_disclaimer_in_its_footer(client):
    content = client.get(reverse("segmenter:home")).content.decode()
    footer = content.split('<footer class="site-footer">', 1)[1]
    assert DISCLAIMER in footer


# --- A study ----------------------------------------------------------------------------


def test_the_study_page_shows_the_grade_from_summed_areas(client, study):
    response = client.get(reverse("segmenter:analysis", args=[study.id]))
    assert response.status_code == 200
    content = response.content.decode()
    assert f'<p class="grade-badge grade-{study.severity["grade"][-1]}">{study.severity["grade"]}</p>' in content
    assert f"{study.severity['lesion_percent']:.1f}\xa0%" in content
    assert "3 slices" in content


def test_the_study_page_plots_every_slice_as_a_link(client, study):
    content = client.get(reverse("segmenter:analysis", args=[study.id])).content.decode()
    svg = re.search(r'<svg class="lesion-plot".*?</svg>', content, re.DOTALL).group(0)
    for index in (1, 2, 3):
        assert f'<a href="{reverse("segmenter:slice", args=[study.id, index])}"' in svg
    assert svg.count('class="bar-ggo"') == 3
    assert svg.count('class="bar-consolidation"') == 3
    assert re.search(r'<svg[^>]*role="img"', svg)


def test_the_study_page_lists_each_slice_with_thumbnail_grade_and_share(client, study):
    content = client.get(reverse("segmenter:analysis", args=[study.id])).content.decode()
    rows = re.findall(r"<tr>.*?</tr>", content.split("<tbody>", 1)[1], re.DOTALL)
    assert len(rows) == 3
    for s, row in zip(study.slices.all(), rows):
        assert reverse("segmenter:slice_thumbnail", args=[study.id, s.index]) in row
        assert f'href="{reverse("segmenter:slice", args=[study.id, s.index])}"' in row
        assert s.name in row
        assert s.severity["grade"] in row
        assert f"{s.severity['lesion_percent']:.1f}\xa0%" in row


@pytest.fixture
def dicom_series(analyse, samples) -> Analysis:
    """A study of the two real DICOM slices, whose pixel spacing and positions are known."""
    return analyse("series.zip", samples.zip({"s/a.dcm": samples.dicom(0), "s/b.dcm": samples.dicom(1)}))


def _volumes(content: str) -> list[tuple[str, str]] | None:
    """(label, value) of each row of the findings' volumes, or None without them."""
    block = re.search(r'<dl class="figures figures-volumes">(.*?)</dl>', content, re.DOTALL)
    if block is None:
        return None
    return re.findall(r"<dt>(?:<span [^>]*></span>)?(.*?)</dt><dd>(.*?)</dd>", block.group(1))


def test_the_study_page_shows_the_studys_volumes(client, dicom_series):
    areas = dicom_series.areas
    slices = list(dicom_series.slices.all())
    assert areas["lung_ml"] == pytest.approx(sum(s.areas["lung_ml"] for s in slices))
    content = client.get(reverse("segmenter:analysis", args=[dicom_series.id])).content.decode()
    lesion = areas["ggo_ml"] + areas["consolidation_ml"]
    assert _volumes(content) == [
        ("Lung volume", f"{areas['lung_ml']:.1f}\xa0mL"),
        ("Lesion volume", f"{lesion:.1f}\xa0mL"),
        ("Ground-glass opacity", f"{areas['ggo_ml']:.1f}\xa0mL"),
        ("Consolidation", f"{areas['consolidation_ml']:.1f}\xa0mL"),
    ]
    assert "Lesion volume is ground-glass opacity plus consolidation" in content


def test_the_study_page_shows_no_volumes_when_a_slice_has_no_spacing(client, study):
    assert study.areas["lung_ml"] is None  # the JPEG slice has no pixel spacing
    content = client.get(reverse("segmenter:analysis", args=[study.id])).content.decode()
    assert _volumes(content) is None and "Lung volume" not in content


def test_a_slice_page_shows_the_same_volumes_for_its_slice(client, dicom_series):
    slice_ = dicom_series.slices.get(index=1)
    content = client.get(reverse("segmenter:slice", args=[dicom_series.id, 1])).content.decode()
    rows = dict(_volumes(content))
    assert rows["Lung volume"] == f"{slice_.areas['lung_ml']:.1f}\xa0mL"
    assert rows["Lesion volume"] == f"{slice_.areas['ggo_ml'] + slice_.areas['consolidation_ml']:.1f}\xa0mL"


def test_a_slice_of_a_study_links_to_its_neighbours_and_back(client, study):
    middle = client.get(reverse("segmenter:slice", args=[study.id, 2])).content.decode()
    assert f'href="{reverse("segmenter:slice", args=[study.id, 1])}"' in middle
    assert f'href="{reverse("segmenter:slice", args=[study.id, 3])}"' in middle
    assert f'href="{reverse("segmenter:analysis", args=[study.id])}"' in middle
    assert "Slice 2 of 3" in middle
    first = client.get(reverse("segmenter:slice", args=[study.id, 1])).content.decode()
    assert 'id="previous-slice"' not in first and 'id="next-slice"' in first
    last = client.get(reverse("segmenter:slice", args=[study.id, 3])).content.decode()
    assert 'id="next-slice"' not in last


def test_the_neighbour_links_keep_the_chosen_layers(client, study):
    query = "layers=1&ggo_colour=%2300ff00&ggo_opacity=0.3&consolidation_colour=%23ff3b30&consolidation_opacity=1&other_lung_colour=%232f80ed&other_lung_opacity=0.2"
    content = client.get(reverse("segmenter:slice", args=[study.id, 2]) + "?" + query).content.decode()
    assert f'href="{reverse("segmenter:slice", args=[study.id, 3])}?layers=1&amp;ggo_colour=%2300ff00' in content


# --- Queued, running and failed ---------------------------------------------------------


def _running(done: int, total: int) -> Analysis:
    return Analysis.objects.create(
        kind=Analysis.Kind.STUDY,
        status=Analysis.Status.RUNNING,
        source_name="big study.zip",
        slices_total=total,
        slices_done=done,
        heartbeat=timezone.now(),
    )


def test_a_running_analysis_shows_its_progress(client):
    analysis = _running(3, 20)
    response = client.get(reverse("segmenter:analysis", args=[analysis.id]))
    assert response.status_code == 200
    content = response.content.decode()
    assert '<progress id="progress-bar" max="20" value="3">' in content
    assert "3 of 20 slices analysed" in content
    assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in content
    config = _json_script(content, "progress-config")
    assert config["statusUrl"] == reverse("segmenter:status", args=[analysis.id])


def test_the_status_endpoint_reports_progress_as_json(client):
    analysis = _running(3, 20)
    response = client.get(reverse("segmenter:status", args=[analysis.id]))
    assert response.json() == {
        "status": "running",
        "status_label": "running",
        "retrying": False,
        "retry_note": "",
        "finished": False,
        "slices_done": 3,
        "slices_total": 20,
        "url": reverse("segmenter:analysis", args=[analysis.id]),
    }


def test_a_queued_upload_shows_progress_until_a_worker_finishes_it(client, upload, samples, settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    url = upload("pair.zip", samples.zip({"a.dcm": samples.dicom(0), "b.dcm": samples.dicom(1)}))["Location"]
    analysis = Analysis.objects.get()
    assert analysis.status == Analysis.Status.QUEUED
    assert "0 of 2 slices analysed" in client.get(url).content.decode()
    assert client.get(reverse("segmenter:slice", args=[analysis.id, 1]))["Location"] == url
    assert client.get(reverse("segmenter:slice_image", args=[analysis.id, 1])).status_code == 404

    processing.analysis_process(analysis_id=str(analysis.id))  # what the worker does

    status = client.get(reverse("segmenter:status", args=[analysis.id])).json()
    assert (status["status"], status["finished"], status["slices_done"]) == ("done", True, 2)
    assert client.get(url).context["slices"][1].index == 2


def test_a_stalled_analysis_is_shown_as_failed(client, settings):
    settings.SEGMENTER_STALE_AFTER_SECONDS = 60
    analysis = _running(3, 20)
    Analysis.objects.filter(pk=analysis.pk).update(heartbeat=timezone.now() - timezone.timedelta(minutes=5))
    content = client.get(reverse("segmenter:analysis", args=[analysis.id])).content.decode()
    assert "The analysis failed" in content
    assert "Processing stopped before it finished" in content


def test_a_failed_analysis_shows_its_error(client):
    analysis = Analysis.objects.create(
        kind=Analysis.Kind.SLICE, status=Analysis.Status.FAILED, source_name="x.png", error="Something specific broke."
    )
    response = client.get(reverse("segmenter:analysis", args=[analysis.id]))
    assert response.status_code == 200
    assert "Something specific broke." in response.content.decode()
    assert client.get(reverse("segmenter:slice", args=[analysis.id, 1]))["Location"] == reverse(
        "segmenter:analysis", args=[analysis.id]
    )


# --- Unknown addresses ------------------------------------------------------------------

ANALYSIS_PAGES = ["analysis", "status", "report_csv", "report_json", "study_zip"]
SLICE_PAGES = ["slice", "slice_image", "slice_labels", "slice_overlay", "slice_thumbnail"]


@pytest.mark.parametrize("page", ANALYSIS_PAGES + SLICE_PAGES)
def test_an_unknown_analysis_is_not_found(client, page):
    args = [uuid.uuid4(), 1] if page in SLICE_PAGES else [uuid.uuid4()]
    response = client.get(reverse(f"segmenter:{page}", args=args))
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/a/not-a-uuid/", "/a/1234/slices/1/", "/a/../etc/passwd", "/a/%00/report.csv"])
def test_a_malformed_address_is_not_found(client, path):
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("index", [0, 4, 999])
@pytest.mark.parametrize("page", SLICE_PAGES)
def test_a_slice_outside_the_study_is_not_found(client, study, page, index):
    assert client.get(reverse(f"segmenter:{page}", args=[study.id, index])).status_code == 404


def test_the_not_found_page_is_the_sites_own(client):
    response = client.get(reverse("segmenter:analysis", args=[uuid.uuid4()]))
    assert "There is no analysis or page at this address." in response.content.decode()


def _long_study(n: int) -> Analysis:
    """A finished study of n slices, rows only (the table needs no files)."""
    from segmenter.ml.results.severity import Areas, assess, assess_study
    from segmenter.models import Slice

    areas = [Areas(ggo=k, consolidation=1, other_lung=1000, sides_known=False) for k in range(n)]
    total, severity = assess_study(areas)
    analysis = Analysis.objects.create(
        kind=Analysis.Kind.STUDY, status=Analysis.Status.DONE, source_name="long.zip",
        slices_total=n, slices_done=n, areas=total.as_dict(), severity=severity.as_dict(),
    )
    Slice.objects.bulk_create(
        Slice(analysis=analysis, index=k + 1, name=f"s{k + 1:03d}.dcm", width=512, height=512,
              image="x.png", labels="y.png", areas=a.as_dict(), severity=assess(a).as_dict())
        for k, a in enumerate(areas)
    )
    return analysis


def test_a_long_studys_table_comes_in_pages_while_the_plot_shows_every_slice(client):
    analysis = _long_study(250)
    url = reverse("segmenter:analysis", args=[analysis.id])
    first = client.get(url).content.decode()
    assert first.count('class="slice-link"') == 100
    assert ">s001.dcm<" in first and ">s100.dcm<" in first and ">s101.dcm<" not in first
    assert first.count('<rect class="bar-ggo"') == 250
    assert "Slices 1–100 of 250" in first
    assert 'href="?page=2#slices-title"' in first

    last = client.get(url, {"page": 3}).content.decode()
    assert last.count('class="slice-link"') == 50
    assert ">s201.dcm<" in last and ">s250.dcm<" in last
    assert "Slices 201–250 of 250" in last
    assert client.get(url, {"page": "x"}).status_code == 200  # a bad page number shows the first

    # "Back to the study" from slice 150 lands on the page that lists it
    slice_page = client.get(reverse("segmenter:slice", args=[analysis.id, 150])).content.decode()
    assert f'href="{url}?page=2">Back to the study' in slice_page


def test_a_short_studys_table_has_no_pager(client):
    content = client.get(reverse("segmenter:analysis", args=[_long_study(100).id])).content.decode()
    assert content.count('class="slice-link"') == 100
    assert "table-pager" not in content
