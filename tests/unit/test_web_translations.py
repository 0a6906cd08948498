"""The Russian catalogue: complete, compiled, and in step with the texts it translates."""

from __future__ import annotations

import ast
import gettext
import re
from pathlib import Path

from segmenter.context_processors import DISCLAIMER
from segmenter.ml.results.reports import DISCLAIMER as ENGINE_DISCLAIMER
from segmenter.ml.results.severity import GRADE_RULES as ENGINE_GRADE_RULES
from segmenter.templatetags.segmenter_tags import GRADE_LABELS, GRADE_RULES

LOCALE = Path(__file__).resolve().parents[2] / "locale" / "ru" / "LC_MESSAGES"


def _entries() -> dict[str, str | list[str]]:
    """msgid (or 'singular|plural') -> msgstr (or plural forms) from the .po file."""
    entries = {}
    for block in (LOCALE / "django.po").read_text(encoding="utf-8").split("\n\n")[1:]:
        parts: dict[str, list[str]] = {}
        key = None
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            match = re.match(r"^(msgid_plural|msgid|msgstr(?:\[\d\])?) (\".*\")$", line)
            if match:
                key = match.group(1)
                parts[key] = [match.group(2)]
            else:
                parts[key].append(line)
        text = {k: "".join(ast.literal_eval(s) for s in v) for k, v in parts.items()}
        if "msgid_plural" in text:
            forms = [text[k] for k in sorted(k for k in text if k.startswith("msgstr["))]
            entries[f"{text['msgid']}|{text['msgid_plural']}"] = forms
        else:
            entries[text["msgid"]] = text["msgstr"]
    return entries


def test_every_message_has_a_russian_translation():
    missing = [k for k, v in _entries().items() if not v or (isinstance(v, list) and not all(v))]
    assert missing == []


def test_the_compiled_catalogue_matches_the_source():
    with open(LOCALE / "django.mo", "rb") as fh:
        compiled = gettext.GNUTranslations(fh)
    for msgid, translation in _entries().items():
        if isinstance(translation, list):
            singular, plural = msgid.split("|")
            assert [compiled.ngettext(singular, plural, n) for n in (1, 2, 5)] == translation[:3]
        else:
            assert compiled.gettext(msgid) == translation, msgid


def test_the_translatable_disclaimer_is_the_engines():
    assert str(DISCLAIMER) == ENGINE_DISCLAIMER


def test_every_grade_has_a_translatable_label_and_rule():
    assert set(GRADE_LABELS) == set(GRADE_RULES) == set(ENGINE_GRADE_RULES)
    assert {k: str(v) for k, v in GRADE_LABELS.items()} == {k: k for k in ENGINE_GRADE_RULES}


def test_the_translatable_grade_rules_say_what_the_engines_say():
    assert {k: str(v) for k, v in GRADE_RULES.items()} == ENGINE_GRADE_RULES
