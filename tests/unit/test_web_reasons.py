"""Why a file could not be read, in the reader's language: the table of reason codes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.utils import translation

from segmenter.ml.io.imaging import UnreadableImage
from segmenter.reasons import NOT_CT_REASONS, UNREADABLE_REASONS, megabytes, unreadable_reason

ML = Path(__file__).resolve().parents[2] / "segmenter" / "ml"
MB = 1024 * 1024


def _raised_codes() -> dict[str, str]:
    """code -> 'module:line' for every UnreadableImage(..., code=...) in segmenter/ml."""
    codes = {}
    for path in sorted(ML.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "UnreadableImage":
                code = next((k.value for k in node.keywords if k.arg == "code"), None)
                where = f"{path.name}:{node.lineno}"
                assert isinstance(code, ast.Constant), f"{where} raises UnreadableImage without a literal code"
                codes[code.value] = where
    return codes


def test_every_code_the_engine_raises_has_a_translatable_reason():
    codes = _raised_codes()
    assert len(codes) > 30
    assert sorted(set(codes) - set(UNREADABLE_REASONS)) == []


def test_the_table_names_only_codes_that_are_raised():
    assert sorted(set(UNREADABLE_REASONS) - set(_raised_codes())) == []


@pytest.mark.parametrize(
    "language, expected",
    [("en", "the image file is damaged or incomplete"), ("ru", "файл изображения повреждён или неполон")],
)
def test_a_reason_reads_in_the_active_language_without_library_details(language, expected):
    exc = UnreadableImage(
        "the image file is damaged or incomplete (truncated)", code="damaged_image", params={"detail": "truncated"}
    )
    with translation.override(language):
        assert unreadable_reason(exc) == expected


def test_a_file_in_an_archive_is_named_with_its_own_reason():
    inner = UnreadableImage("the file is empty", code="empty")
    exc = UnreadableImage(
        "a/b.png: the file is empty", code="unreadable_member", params={"member": "a/b.png", "reason": inner}
    )
    with translation.override("ru"):
        assert unreadable_reason(exc) == "a/b.png: файл пуст"


def test_sizes_read_in_megabytes_and_counts_are_grouped():
    sizes = {"member": "a.dcm", "size_bytes": 70 * MB + 1, "limit_bytes": 64 * MB}
    exc = UnreadableImage("...", code="archive_member_too_large", params=sizes)
    with translation.override("ru"):
        assert unreadable_reason(exc) == "распакованный a.dcm займёт 70,1 МБ; допустимо не более 64 МБ"
    pixels = {"width": 5000, "height": 5000, "limit": 4096 * 4096}
    too_large = UnreadableImage("...", code="image_too_large", params=pixels)
    with translation.override("en"):
        assert unreadable_reason(too_large) == "the image is 5000×5000 pixels; the limit is 16,777,216 pixels"
    with translation.override("ru"):
        assert "16\xa0777\xa0216 пикселей" in unreadable_reason(too_large)


def test_an_unknown_or_missing_code_falls_back_to_the_english_message():
    assert unreadable_reason(UnreadableImage("something new", code="not_in_the_table")) == "something new"
    with translation.override("ru"):
        assert unreadable_reason(UnreadableImage("no code at all")) == "no code at all"


@pytest.mark.parametrize(
    "n_bytes, english, russian",
    [
        (MB, "1", "1"),
        (MB + 8, "1.1", "1,1"),  # rounded up: a file over a 1 MB limit never reads as 1 MB
        (int(1.06 * MB), "1.1", "1,1"),
        (MB // 2, "0.5", "0,5"),
        (2048 * MB, "2048", "2048"),
        (20480 * MB, "20,480", "20\xa0480"),
    ],
)
def test_megabytes_show_a_tenth_only_when_needed(n_bytes, english, russian):
    with translation.override("en"):
        assert megabytes(n_bytes) == english
    with translation.override("ru"):
        assert megabytes(n_bytes) == russian


def _ct_check_phrases() -> tuple[set[str], set[str]]:
    """Every refusal phrase ctcheck's why_not_ct and lung_verdict return, and every caution
    lung_verdict gives."""
    tree = ast.parse((ML / "io" / "ctcheck.py").read_text(encoding="utf-8"))
    reasons, cautions = set(), set()
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name in ("why_not_ct", "lung_verdict"):
            for node in ast.walk(fn):
                value = getattr(node, "value", None)
                if isinstance(node, ast.Return) and isinstance(value, ast.Tuple):
                    value = value.elts[0]
                if isinstance(node, ast.Return) and isinstance(value, ast.Constant) and value.value:
                    reasons.add(value.value)
                if isinstance(node, ast.Assign) and isinstance(value, ast.Constant) and value.value:
                    if any(isinstance(t, ast.Name) and t.id == "caution" for t in node.targets):
                        cautions.add(value.value)
    return reasons, cautions


def _ct_check_reasons() -> set[str]:
    return _ct_check_phrases()[0]


def test_every_caution_the_ct_check_gives_reads_in_russian():
    from segmenter.reasons import CAUTIONS

    cautions = _ct_check_phrases()[1]
    assert cautions and sorted(cautions - set(CAUTIONS)) == []
    with translation.override("ru"):
        assert all(str(CAUTIONS[c]) != c for c in cautions)


def test_every_reason_the_ct_check_gives_reads_in_russian():
    reasons = _ct_check_reasons()
    assert len(reasons) >= 8
    assert sorted(reasons - set(NOT_CT_REASONS)) == []
    with translation.override("ru"):
        untranslated = [r for r in reasons if str(NOT_CT_REASONS[r]) == r]
    assert untranslated == []
