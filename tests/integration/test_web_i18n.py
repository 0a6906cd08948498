"""English and Russian: switching on every page, and results read in Russian."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from segmenter.models import Analysis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]


def _switch(client, language: str, next_url: str = "/"):
    return client.post(reverse("set_language"), {"language": language, "next": next_url})


def test_the_home_page_is_english_by_default(client):
    content = client.get(reverse("segmenter:home")).content.decode()
    assert '<html lang="en">' in content
    assert "Lung-damage segmentation of chest CT" in content


def test_switching_to_russian_translates_the_page_and_returns_to_it(client):
    response = _switch(client, "ru", "/?from=test")
    assert response.status_code == 302 and response["Location"] == "/?from=test"
    content = client.get(reverse("segmenter:home")).content.decode()
    assert '<html lang="ru">' in content
    assert "Сегментация поражений лёгких на КТ грудной клетки" in content
    assert "Перетащите файл сюда" in content
    assert "Только для исследований и демонстрации; не для диагностики." in content
    assert "Drag a file here" not in content


def test_switching_back_to_english_works(client):
    _switch(client, "ru")
    _switch(client, "en")
    assert "Drag a file here" in client.get(reverse("segmenter:home")).content.decode()


def test_the_browsers_language_is_honoured(client):
    content = client.get(reverse("segmenter:home"), headers={"Accept-Language": "ru-RU,ru;q=0.9"}).content.decode()
    assert "Загрузка исследования" in content


def test_the_upload_scripts_strings_are_translated(client, settings):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
    _switch(client, "ru")
    content = client.get(reverse("segmenter:home")).content.decode()
    config = json.loads(re.search(r'<script id="upload-config" type="application/json">(.*?)</script>', content).group(1))
    assert config["strings"]["uploading"] == "Загрузка… %(percent)s"
    assert config["strings"]["tooLarge"] == "Файл больше допустимого размера (512 МБ)."


def test_an_upload_error_is_reported_in_russian(client, upload):
    _switch(client, "ru")
    response = upload("scan.png", b"")
    assert response.status_code == 400
    assert response.context["error"] == "Файл пуст."


def test_the_size_of_a_file_over_the_limit_is_said_in_russian(client, upload, settings):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 1024 * 1024
    _switch(client, "ru")
    response = upload("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (1024 * 1024 + 60 * 1024))
    assert response.status_code == 413
    assert response.context["error"] == "Размер файла — 1,1 МБ; допустимо не более 1 МБ."


def _colour_photo() -> bytes:
    import io

    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    buf = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, make, expected",
    [
        (
            "scan.png",
            lambda s: s.png()[: len(s.png()) // 2],
            "Не удалось прочитать scan.png: файл изображения повреждён или неполон.",
        ),
        (
            "study.zip",
            lambda s: s.zip({"../../x.png": s.png()}),
            "Не удалось прочитать study.zip: в архиве zip есть небезопасный путь (../../x.png).",
        ),
        (
            "photo.png",
            lambda s: _colour_photo(),
            "Не удалось прочитать photo.png: это не похоже на срез КТ: это цветное изображение.",
        ),
    ],
    ids=["truncated png", "unsafe zip path", "colour photograph"],
)
def test_why_a_file_could_not_be_read_is_said_in_russian(client, upload, samples, name, make, expected):
    _switch(client, "ru")
    response = upload(name, make(samples))
    assert response.status_code == 400
    message = response.context["error"]
    assert message == expected
    rest = message.replace(name, "").replace("../../x.png", "").replace("архиве zip", "архиве")  # the format's name stays
    assert not re.search(r"[A-Za-z]", rest)  # no English left
    content = response.content.decode()
    assert '<html lang="ru">' in content and html.escape(message) in content


def test_a_slice_result_reads_in_russian(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    severity = analysis.slices.get().severity
    _switch(client, "ru")
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    grade = severity["grade"].replace("CT", "КТ")
    assert f">{grade}</p>" in content
    assert "Матовое стекло" in content and "Консолидация" in content
    assert "Правое лёгкое" in content and "Левое лёгкое" in content
    assert f"{severity['lesion_percent']:.1f}".replace(".", ",") + "\xa0%" in content  # decimal comma
    assert "Только маска (скрыть изображение КТ)" in content
    assert "пятна меньше 6 мм в поперечнике" in content and "хотя бы на 90 %" in content
    assert "не для диагностики" in content.split('class="research-banner"', 1)[1]


def test_a_study_result_reads_in_russian_with_svg_numbers_unlocalised(client, analyse, samples):
    archive = samples.zip({"a.dcm": samples.dicom(0), "b.jpg": samples.jpeg(5)})
    analysis = analyse("pair.zip", archive)
    _switch(client, "ru")
    content = client.get(reverse("segmenter:analysis", args=[analysis.id])).content.decode()
    assert "Результат исследования" in content
    assert "2 среза" in content  # Russian plural of two
    svg = re.search(r'<svg class="lesion-plot".*?</svg>', content, re.DOTALL).group(0)
    coordinates = re.findall(r' (?:x|y|width|height|cx|cy|x1|x2|y1|y2)="([^"]*)"', svg)
    assert coordinates and all(re.fullmatch(r"-?\d+(\.\d+)?", c) for c in coordinates)


def test_a_studys_volumes_read_in_russian(client, analyse, samples):
    analysis = analyse("series.zip", samples.zip({"a.dcm": samples.dicom(0), "b.dcm": samples.dicom(1)}))
    areas = analysis.areas
    _switch(client, "ru")
    content = client.get(reverse("segmenter:analysis", args=[analysis.id])).content.decode()
    block = re.search(r'<dl class="figures figures-volumes">.*?</dl>', content, re.DOTALL).group(0)
    assert "Объёмы" in content
    for label, value in (
        ("Объём лёгких", areas["lung_ml"]),
        ("Объём поражения", areas["ggo_ml"] + areas["consolidation_ml"]),
        ("Матовое стекло", areas["ggo_ml"]),
        ("Консолидация", areas["consolidation_ml"]),
    ):
        assert label in block
        assert f"{value:.1f}".replace(".", ",") + "\xa0мл" in block
    assert "Объём поражения — это матовое стекло и консолидация вместе" in content


def test_every_page_offers_the_language_switch(client, analyse, samples):
    analysis = analyse("0.dcm", samples.dicom())
    running = Analysis.objects.create(
        kind="study", status="running", source_name="s.zip", slices_total=4, heartbeat=timezone.now()
    )
    pages = [
        reverse("segmenter:home"),
        reverse("segmenter:slice", args=[analysis.id, 1]),
        reverse("segmenter:analysis", args=[running.id]),
        "/a/00000000-0000-0000-0000-000000000000/",
    ]
    for url in pages:
        content = client.get(url).content.decode()
        assert f'<form class="language-switch" action="{reverse("set_language")}" method="post">' in content, url
        assert 'value="ru" lang="ru"' in content and ">Русский</button>" in content
        assert f'name="next" value="{url}"' in content


def test_a_workers_failure_reason_is_written_in_the_uploaders_language(client, upload, samples, settings, use_engine):
    from django.utils import translation

    from segmenter import processing
    from tests import stubs

    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    use_engine(stubs.FailingOnThirdSlice)
    _switch(client, "ru")
    upload("three.zip", samples.zip({f"{k}.dcm": samples.dicom(k % 2) for k in range(3)}))
    analysis = Analysis.objects.get()
    assert (analysis.status, analysis.language) == ("queued", "ru")

    with translation.override("en"):  # the worker's own language
        processing.analysis_process(analysis_id=str(analysis.id))

    analysis.refresh_from_db()
    assert analysis.status == "failed"
    assert analysis.error == "Обработка не удалась из-за внутренней ошибки; попробуйте ещё раз."
    _switch(client, "en")
    page = client.get(reverse("segmenter:analysis", args=[analysis.id])).content.decode()
    assert "Обработка не удалась" in html.unescape(page)  # as written for the uploader
