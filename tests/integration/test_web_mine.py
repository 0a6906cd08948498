"""My analyses: the home page lists what this browser uploaded (a signed cookie, not an
account), and only this browser can delete them, files and rows."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from segmenter.models import Analysis, Slice
from segmenter.views import BROWSER_COOKIE

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]


def _home(client) -> str:
    response = client.get(reverse("segmenter:home"))
    assert response.status_code == 200
    return response.content.decode()


def test_an_upload_is_listed_on_this_browsers_home_page_with_its_grade(client, analyse, samples):
    analysis = analyse("chest.dcm", samples.dicom())
    cookie = client.cookies[BROWSER_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    page = _home(client)
    assert 'id="mine"' in page and "chest.dcm" in page
    assert reverse("segmenter:analysis", args=[analysis.id]) in page
    assert analysis.severity["grade"] in page
    assert reverse("segmenter:delete", args=[analysis.id]) in page


def _browser_id(client) -> str:
    """The browser id the client's cookie carries, read as the views read it."""
    from django.test import RequestFactory

    from segmenter.views import _browser_token

    request = RequestFactory().get("/")
    request.COOKIES[BROWSER_COOKIE] = client.cookies[BROWSER_COOKIE].value
    token = _browser_token(request)
    assert token
    return token


def test_a_second_upload_keeps_the_same_browser_and_lists_both_newest_first(client, analyse, samples):
    analyse("first.png", samples.png(1))
    token = _browser_id(client)
    analyse("second.png", samples.png(2))
    # The same id; its signature carries a timestamp, so the cookie itself may differ.
    assert _browser_id(client) == token
    page = _home(client)
    assert page.index("second.png") < page.index("first.png")
    assert len({a.browser for a in Analysis.objects.all()}) == 1


def test_another_browser_sees_nothing_and_cannot_delete(client, analyse, samples):
    analysis = analyse("chest.dcm", samples.dicom())
    stranger = Client()
    assert "chest.dcm" not in _home(stranger)
    response = stranger.post(reverse("segmenter:delete", args=[analysis.id]))
    assert response.status_code in (403, 404)  # no CSRF cookie, then no ownership
    stranger_csrf = Client(enforce_csrf_checks=False)
    stranger_csrf.cookies[BROWSER_COOKIE] = "forged"
    assert stranger_csrf.post(reverse("segmenter:delete", args=[analysis.id])).status_code == 404
    assert Analysis.objects.filter(pk=analysis.pk).exists()


def test_a_tampered_cookie_lists_nothing(client, analyse, samples):
    analyse("chest.dcm", samples.dicom())
    value = client.cookies[BROWSER_COOKIE].value
    client.cookies[BROWSER_COOKIE] = value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB")
    assert "chest.dcm" not in _home(client)


def test_deleting_removes_the_rows_and_every_file(client, analyse, samples, stored_files):
    study = analyse("study.zip", samples.zip({"1.jpg": samples.jpeg(1), "2.jpg": samples.jpeg(2)}))
    kept = analyse("kept.png", samples.png(3))
    assert any(str(study.id) in f for f in stored_files())
    response = client.post(reverse("segmenter:delete", args=[study.id]))
    assert response.status_code == 302 and response["Location"].endswith("#mine")
    assert not Analysis.objects.filter(pk=study.pk).exists()
    assert not Slice.objects.filter(analysis_id=study.pk).exists()
    assert not any(str(study.id) in f for f in stored_files())
    assert any(str(kept.id) in f for f in stored_files())
    assert client.get(reverse("segmenter:analysis", args=[study.id])).status_code == 404
    assert "kept.png" in _home(client) and "study.zip" not in _home(client)


def test_delete_answers_only_post(client, analyse, samples):
    analysis = analyse("chest.dcm", samples.dicom())
    assert client.get(reverse("segmenter:delete", args=[analysis.id])).status_code == 405
    assert Analysis.objects.filter(pk=analysis.pk).exists()


def test_api_uploads_belong_to_no_browser(client, samples):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post("/api/v1/analyses", {"file": SimpleUploadedFile("api.dcm", samples.dicom())})
    assert response.status_code == 201
    assert Analysis.objects.get().browser == ""
    assert BROWSER_COOKIE not in response.cookies
    assert "api.dcm" not in _home(client)
