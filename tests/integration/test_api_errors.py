"""Errors raised by the framework and by middleware, not by the API's views: JSON in the
API's shape ({"error": "..."}) under /api/, the HTML pages elsewhere.

The test views below raise what Django's request handling turns into a 400, 403, 404 or
500 outside any view of the API; this module is the URLconf of its tests (the error
handlers are taken from the project's own URLconf).
"""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.test import Client
from django.urls import include, path

from _42epochs.urls import handler400, handler403, handler404, handler500  # noqa: F401 - used by Django
from _42epochs.urls import urlpatterns as project_urlpatterns


def _raising(exc: Exception):
    def view(request):
        raise exc

    return view


_failing = [
    path("suspicious", _raising(SuspiciousOperation("a hostile request"))),
    path("forbidden", _raising(PermissionDenied())),
    path("broken", _raising(RuntimeError("a bug"))),
]
urlpatterns = [path("api/v1/test/", include(_failing)), path("test/", include(_failing)), *project_urlpatterns]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


@pytest.fixture
def client():
    return Client(raise_request_exception=False)


def _json_error(response, status: int) -> str:
    assert response.status_code == status
    assert response["Content-Type"].split(";")[0].endswith("json")  # openapi.json's is application/vnd.oai.openapi+json
    body = json.loads(response.content)
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def _html(response, status: int) -> None:
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("name", "status"), [("suspicious", 400), ("forbidden", 403), ("broken", 500)]
)
def test_the_api_answers_framework_errors_in_json(client, name, status):
    _json_error(client.get(f"/api/v1/test/{name}"), status)


@pytest.mark.parametrize(
    ("name", "status"), [("suspicious", 400), ("forbidden", 403), ("broken", 500)]
)
def test_the_pages_answer_framework_errors_in_html(client, name, status):
    _html(client.get(f"/test/{name}"), status)


def test_a_host_not_allowed_answers_400_json_from_the_api_and_html_from_the_pages(client):
    _json_error(client.get("/api/v1/analyses", headers={"Host": "evil.example"}), 400)
    _html(client.get("/", headers={"Host": "evil.example"}), 400)


def test_paths_outside_the_api_version_answer_404_json(client):
    for path_ in ("/api/", "/api/v2/analyses", "/api/anything"):
        _json_error(client.get(path_), 404)
    _html(client.get("/no-such-page/"), 404)


def test_a_post_to_an_unknown_api_path_answers_404_json_not_a_csrf_page():
    response = Client(enforce_csrf_checks=True).post("/api/v1/nothing-here", {"a": "b"})
    _json_error(response, 404)


def test_a_csrf_failure_under_the_api_answers_json(rf):
    from segmenter.errors import csrf_failure

    assert "CSRF" in _json_error(csrf_failure(rf.post("/api/v1/analyses"), reason="no token"), 403)
    _html(csrf_failure(rf.post("/"), reason="no token"), 403)


def test_a_malformed_content_length_answers_400_json(client):
    response = client.post("/api/v1/analyses", data=b"x", content_type="multipart/form-data; boundary=x",
                           headers={"Content-Length": "ab"})
    _json_error(response, 400)


def test_a_malformed_multipart_body_answers_400_json(client):
    response = client.post("/api/v1/analyses", data=b"--x\r\nnonsense", content_type="multipart/form-data; boundary=x")
    _json_error(response, 400)


def test_a_wrong_method_answers_405_json(client):
    _json_error(client.post("/api/v1/openapi.json"), 405)
    _json_error(client.put("/api/v1/analyses"), 405)


def test_an_upload_over_the_limit_answers_413_json(client, settings):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 10
    response = client.post("/api/v1/analyses", data=b"x" * (2 * 1024 * 1024), content_type="multipart/form-data; boundary=x")
    _json_error(response, 413)
