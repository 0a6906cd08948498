"""Safe defaults on the wire: the API's Origin check, Content-Security-Policy (and pages it
does not break), Permissions-Policy, and HSTS only behind HTTPS."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segmenter.middleware import header_value
from segmenter.ml.results.overlay import DEFAULT_STYLES
from segmenter.models import Analysis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]

API = "/api/v1/analyses"


@pytest.fixture
def post(client, django_capture_on_commit_callbacks):
    def send(data: bytes, **headers):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(API, {"file": SimpleUploadedFile("chest.png", data)}, headers=headers)

    return send


# --- The API's Origin check ----------------------------------------------------------------


def test_the_api_refuses_an_upload_from_another_sites_page(post, samples, stored_files):
    response = post(samples.png(), Origin="https://evil.example")
    assert response.status_code == 403
    assert "https://evil.example" in response.json()["error"]
    assert not Analysis.objects.exists() and stored_files() == []


def test_the_api_refuses_a_foreign_origin_before_reading_the_body(client):
    response = client.post(API, data=b"not multipart", content_type="multipart/form-data; boundary=x",
                           headers={"Origin": "null"})
    assert response.status_code == 403 and "error" in response.json()


def test_the_api_accepts_an_upload_from_the_sites_own_pages(post, samples):
    assert post(samples.png(), Origin="http://testserver").status_code == 201


def test_the_api_accepts_a_script_that_sends_no_origin(post, samples):
    assert post(samples.png()).status_code == 201


def test_the_api_accepts_the_trusted_origins(post, samples, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://ct.example.org", "https://*.hospital.example"]
    assert post(samples.png(), Origin="https://ct.example.org").status_code == 201
    assert post(samples.png(), Origin="https://viewer.hospital.example").status_code == 201
    assert post(samples.png(), Origin="http://viewer.hospital.example").status_code == 403
    assert post(samples.png(), Origin="https://evilhospital.example").status_code == 403


def test_the_api_compares_the_whole_origin_scheme_and_port_included(post, samples):
    assert post(samples.png(), Origin="https://testserver").status_code == 403
    assert post(samples.png(), Origin="http://testserver:8080").status_code == 403


def test_reads_from_another_sites_page_are_not_refused(client):
    # No CORS headers: the other page cannot read the answer anyway.
    response = client.get("/api/v1/openapi.json", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200


# --- Headers ------------------------------------------------------------------------------


def test_every_answer_carries_a_content_security_policy_without_inline_script(client):
    for path in (reverse("segmenter:home"), "/api/v1/openapi.json", "/no-such-page/"):
        policy = client.get(path)["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'", path
        assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
        assert "unsafe" not in policy


def test_every_answer_carries_a_permissions_policy(client):
    policy = client.get(reverse("segmenter:home"))["Permissions-Policy"]
    assert "camera=()" in policy and "microphone=()" in policy and "geolocation=()" in policy


def test_a_policy_is_written_as_browsers_read_it():
    assert header_value({"default-src": ["'self'"], "img-src": ["'self'", "data:"], "sandbox": True, "x": []}) == (
        "default-src 'self'; img-src 'self' data:; sandbox"
    )


def test_hsts_is_not_sent_without_secure_cookies(client):
    assert "Strict-Transport-Security" not in client.get(reverse("segmenter:home"), secure=True)


def test_hsts_is_sent_over_https_with_secure_cookies(client, settings):
    settings.SECURE_HSTS_SECONDS = 31536000  # what DJANGO_SECURE_COOKIES=1 sets (tests/unit/test_settings.py)
    assert client.get(reverse("segmenter:home"), secure=True)["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in client.get(reverse("segmenter:home"))


# --- Pages that the policy does not break -------------------------------------------------


class _InlineCode(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' blocks: inline scripts (json_script's
    non-executable application/json is fine), event-handler and style attributes, <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._script_type: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in attributes:
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in attributes:
            self._script_type = attributes.get("type") or "text/javascript"

    def handle_data(self, data):
        if self._script_type not in (None, "application/json") and data.strip():
            self.found.append(f"<script type={self._script_type}> {data.strip()[:40]}")

    def handle_endtag(self, tag):
        if tag == "script":
            self._script_type = None


def _inline_code(html: str) -> list[str]:
    parser = _InlineCode()
    parser.feed(html)
    return parser.found


def test_no_page_has_inline_script_or_style(client, analyse, samples):
    slice_ = analyse("0.dcm", samples.dicom())
    study = analyse("case.zip", samples.zip({"a.dcm": samples.dicom(0), "b.dcm": samples.dicom(1)}))
    queued = Analysis.objects.create(kind=Analysis.Kind.STUDY, source_name="q.zip", slices_total=3)
    failed = Analysis.objects.create(kind=Analysis.Kind.SLICE, source_name="f.png", status=Analysis.Status.FAILED)
    pages = [
        reverse("segmenter:home"),
        reverse("segmenter:slice", args=[slice_.id, 1]),
        reverse("segmenter:analysis", args=[study.id]),
        reverse("segmenter:slice", args=[study.id, 2]),
        reverse("segmenter:analysis", args=[queued.id]),
        reverse("segmenter:analysis", args=[failed.id]),
        "/no-such-page/",
    ]
    for path in pages:
        response = client.get(path)
        assert response.status_code in (200, 404), path
        assert _inline_code(response.content.decode()) == [], path


def test_the_server_error_page_has_no_inline_style():
    from django.template.loader import get_template

    assert _inline_code(get_template("500.html").render()) == []


def test_the_stylesheet_holds_the_default_layer_colours(settings):
    # They were set inline on <body>; the stylesheet is the one place now.
    css = (settings.BASE_DIR / "static" / "segmenter" / "site.css").read_text()
    for name, style in DEFAULT_STYLES.items():
        match = re.search(rf"--{name.replace('_', '-')}:\s*(#[0-9a-fA-F]{{6}});", css)
        assert match and match.group(1).lower() == style.colour.lower(), name
