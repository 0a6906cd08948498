"""File names: the suffixes that are read, and the cleaners of names that are shown or written.

Every list of suffixes and every file-name cleaner of the application is here, once:

* ``UPLOAD_SUFFIXES``: what an upload, a command-line path or an evaluation image may be
  called (slices, archives of slices, NIfTI volumes); ``known_suffix`` and
  ``strip_suffix`` find and drop the longest of them (``.nii.gz`` before ``.gz``);
* ``clean_name``: an upload's name as it is shown and stored (no folders, printable);
* ``slice_stem``: a slice's name as the start of a file name ('ct.nii.gz[12]' -> 'ct-012');
* ``file_part``: any text as part of a written file name (letters, digits, '-', '_', '.').
"""

from __future__ import annotations

import os
import re

from .archive import ARCHIVE_SUFFIXES
from .imaging import DICOM_SUFFIXES, IMAGE_SUFFIXES
from .volumes import NIFTI_SUFFIXES

#: Files that hold one slice (or the frames of one multi-frame DICOM).
SLICE_SUFFIXES = (*IMAGE_SUFFIXES, *DICOM_SUFFIXES)
#: Every suffix an input may have: slices, archives of slices and volumes.
UPLOAD_SUFFIXES = (*SLICE_SUFFIXES, *ARCHIVE_SUFFIXES, *NIFTI_SUFFIXES)
#: The longest name an upload keeps (characters).
MAX_NAME_CHARS = 200
#: A frame of a multi-frame DICOM or a NIfTI volume is named "file[k]" (imaging, volumes).
FRAME_SUFFIX = re.compile(r"\[(\d+)\]$")
#: Digits of a frame number in a file name ('ct-012'), so that names sort in frame order.
FRAME_DIGITS = 3
#: Characters a written file name keeps besides letters and digits.
FILE_NAME_EXTRA = "-_."


def known_suffix(name: str) -> str:
    """The longest of UPLOAD_SUFFIXES that ``name`` ends with (any case), as written in
    ``name``; "" when none ('Study.NII.GZ' -> '.NII.GZ', 'IM0001' -> '')."""
    lower = name.lower()
    suffix = max((s for s in UPLOAD_SUFFIXES if lower.endswith(s)), key=len, default="")
    return name[len(name) - len(suffix) :] if suffix else ""


def strip_suffix(name: str) -> str:
    """``name`` without its known suffix ('study.tar.gz' -> 'study'); may be empty."""
    suffix = known_suffix(name)
    return name[: -len(suffix)] if suffix else name


def clean_name(name: str) -> str:
    """An upload's name as shown and stored: without any folder part, printable, at most
    MAX_NAME_CHARS characters (its end, which holds the suffix), never empty."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = "".join(ch for ch in base if ch.isprintable())
    return base[-MAX_NAME_CHARS:] or "upload"


def file_part(text: str, fallback: str) -> str:
    """``text`` as part of a written file name: every character but letters, digits and
    FILE_NAME_EXTRA becomes "_", and no dot at either end; ``fallback`` when nothing is left."""
    kept = "".join(ch if ch.isalnum() or ch in FILE_NAME_EXTRA else "_" for ch in text)
    return kept.strip(".") or fallback


def slice_stem(name: str) -> str:
    """A slice's name (CTSlice.name) as the start of a file name: no folders, no extension,
    and a frame's number zero-padded after a dash.

    'study/a.dcm' -> 'a', 'x.dcm[3]' -> 'x-003', 'ct.nii.gz[12]' -> 'ct-012'. The result
    may be empty (a name that is only an extension); callers pick a fallback.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    frame = ""
    match = FRAME_SUFFIX.search(base)
    if match:
        base, frame = base[: match.start()], f"{int(match.group(1)):0{FRAME_DIGITS}d}"
    return "-".join(part for part in (strip_suffix(base), frame) if part)
