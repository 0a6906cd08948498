"""RAR, 7z and tar studies through the API, the web page and the command line."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from segmenter.models import Analysis
from tests.archives import Entry, rar4, rar5, seven_zip, tar

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]

URL = "/api/v1/analyses"
BUILDERS = {
    "study.rar": rar4,
    "study-v5.rar": rar5,
    "study.tar.gz": lambda m: tar(m, "gz"),
    "study.tgz": lambda m: tar(m, "gz"),
    "study.tar.xz": lambda m: tar(m, "xz"),
    "study.tar": tar,
    "study.7z": seven_zip,
}


@pytest.fixture
def post(client, django_capture_on_commit_callbacks):
    def send(name: str, data: bytes, **extra):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(URL, {"file": SimpleUploadedFile(name, data)}, **extra)

    return send


@pytest.fixture
def six_slices(samples) -> dict[str, bytes]:
    """Six real slices in a folder, named so that name order and natural order differ."""
    return {f"series/slice{k}.jpg": samples.jpeg(k) for k in (10, 2, 1, 3, 4, 5)}


@pytest.mark.parametrize("name", BUILDERS)
def test_an_archive_of_six_real_slices_becomes_a_graded_six_slice_study(post, name, six_slices):
    response = post(name, BUILDERS[name](six_slices))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "study" and body["status"] == "done"
    assert [s["name"] for s in body["slices"]] == [f"series/slice{k}.jpg" for k in (1, 2, 3, 4, 5, 10)]
    assert body["severity"]["grade"] in {"CT-0", "CT-1", "CT-2", "CT-3", "CT-4"}
    assert Analysis.objects.get().slices.count() == 6


@pytest.mark.parametrize("build", [rar4, rar5], ids=["RAR 4", "RAR 5"])
@pytest.mark.parametrize("path", ["../escaped.jpg", "../../escaped.jpg", "/tmp/escaped.jpg"])
def test_a_rar_with_a_path_out_of_the_archive_writes_nothing_outside_and_answers_400(
    post, build, path, six_slices, samples, stored_files, tmp_path, monkeypatch
):
    work = tmp_path / "cwd" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = sorted(p for p in tmp_path.rglob("*") if "media" not in p.parts)
    response = post("study.rar", build({**six_slices, path: samples.jpeg(0)}))
    assert response.status_code == 400
    assert "unsafe path" in response.json()["error"]
    assert stored_files() == [] and not Analysis.objects.exists()
    assert sorted(p for p in tmp_path.rglob("*") if "media" not in p.parts) == before
    assert not (tmp_path / "escaped.jpg").exists() and not (tmp_path / "cwd" / "escaped.jpg").exists()


@pytest.mark.parametrize(
    "name, build, message",
    [
        ("s.rar", lambda s: rar5([Entry(n, d, encrypted=True) for n, d in s.items()]), "encrypted"),
        ("s.rar", lambda s: rar4(s, volume=True), "one volume of several"),
        ("s.tar.gz", lambda s: tar([Entry("series/l.jpg", target="/etc/passwd")]), "is a link"),
        ("s.tar.gz", lambda s: tar({"a.png": b"\0" * (8 * 1024 * 1024)}, "gz"), "zip bomb"),
        ("s.7z", lambda s: seven_zip({"inner.zip": b"PK\x03\x04" + b"\0" * 100}), "itself an archive"),
        ("s.tar.xz", lambda s: tar({"notes.txt": b"hello"}, "xz"), "no PNG, JPEG or DICOM slices"),
        ("s.rar", lambda s: b"Rar!\x1a\x07\x00 broken", "damaged"),
        ("s.7z", lambda s: b"not a 7z at all", "not a valid 7z archive"),
    ],
)
def test_hostile_and_broken_archives_answer_400_with_a_reason_and_store_nothing(
    post, stored_files, six_slices, name, build, message
):
    response = post(name, build(six_slices))
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]
    assert stored_files() == [] and not Analysis.objects.exists()


def test_an_encrypted_rar_is_refused_in_russian_too(post, six_slices):
    data = rar4([Entry(n, d, encrypted=True) for n, d in six_slices.items()])
    response = post("s.rar", data, headers={"Accept-Language": "ru"})
    assert response.status_code == 400
    assert response.json()["error"] == (
        "Не удалось прочитать s.rar: архив RAR зашифрован; загрузите незашифрованный архив."
    )


def test_the_web_form_takes_a_rar_study(client, upload, six_slices):
    response = upload("study.rar", rar5(six_slices), xhr=True)
    assert response.status_code == 200, response.content
    assert Analysis.objects.get().slices.count() == 6


def test_the_home_page_and_the_openapi_document_name_the_archive_formats(client):
    page = client.get(reverse("segmenter:home")).content.decode()
    assert "zip, RAR, 7z, tar, tar.gz or tar.xz" in page
    doc = client.get("/api/v1/openapi.json").content.decode()
    assert ".rar" in doc and ".7z" in doc and ".tar.xz" in doc


def test_the_command_line_segments_rar_and_tar_xz_studies(tmp_path, six_slices):
    (tmp_path / "a.rar").write_bytes(rar4(six_slices))
    (tmp_path / "b.tar.xz").write_bytes(tar(six_slices, "xz"))
    out = io.StringIO()
    call_command("segment", str(tmp_path / "a.rar"), str(tmp_path / "b.tar.xz"), "--out", str(tmp_path / "out"),
                 "--no-progress", stdout=out, stderr=io.StringIO())
    for stem in ("a", "b"):
        assert len(list((tmp_path / "out" / stem).glob("*-labels.png"))) == 6
    assert out.getvalue().count("CT-") == 2
