"""Names: the one list of suffixes read, and the cleaners of names shown and written."""

import pytest

from segmenter.ml.io.names import (
    UPLOAD_SUFFIXES,
    clean_name,
    file_part,
    known_suffix,
    slice_stem,
    strip_suffix,
)


@pytest.mark.parametrize(
    "name, stem",
    [
        ("0.dcm", "0"),
        ("study/sub/a.PNG", "a"),
        ("study\\a.jpeg", "a"),
        ("IM000001", "IM000001"),
        ("x.dcm[3]", "x-003"),
        ("case/x.dcm[1]", "x-001"),
        ("ct.nii.gz[12]", "ct-012"),
        ("ct.nii[7]", "ct-007"),
        ("chest.NII.GZ[1234]", "chest-1234"),
        ("IM01[2]", "IM01-002"),
        ("scan[1].png", "scan[1]"),  # brackets in a file's own name are not a frame
        ("a.b.png", "a.b"),
        (".png", ""),
        (".dcm[2]", "002"),
    ],
)
def test_a_slice_stem_drops_folders_and_extension_and_pads_the_frame(name, stem):
    assert slice_stem(name) == stem


@pytest.mark.parametrize(
    "name, suffix, stem",
    [
        ("ct.nii.gz", ".nii.gz", "ct"),
        ("Study.TAR.GZ", ".TAR.GZ", "Study"),
        ("scan.tgz", ".tgz", "scan"),
        ("a.7z", ".7z", "a"),
        ("x.dicom", ".dicom", "x"),
        ("IM000001", "", "IM000001"),
        ("notes.txt", "", "notes.txt"),
    ],
)
def test_the_longest_known_suffix_is_found_and_dropped(name, suffix, stem):
    assert known_suffix(name) == suffix
    assert strip_suffix(name) == stem


def test_every_front_end_reads_the_same_suffixes():
    from segmenter.ml.evaluation import evaluate

    assert {
        ".png",
        ".jpg",
        ".jpeg",
        ".dcm",
        ".dicom",
        ".zip",
        ".rar",
        ".7z",
        ".tar",
        ".tar.gz",
        ".nii",
        ".nii.gz",
    } <= set(UPLOAD_SUFFIXES)
    assert set(evaluate.IMAGE_SUFFIXES) <= set(UPLOAD_SUFFIXES)


def test_an_upload_name_loses_folders_and_control_characters_and_keeps_its_end():
    assert clean_name("C:\\Users\\x\\scan.dcm") == "scan.dcm"
    assert clean_name("a\u0007b.png") == "ab.png"
    assert clean_name("") == "upload"
    long = "x" * 300 + ".nii.gz"
    assert len(clean_name(long)) == 200 and clean_name(long).endswith(".nii.gz")


def test_a_file_name_part_keeps_letters_digits_dash_underscore_and_inner_dots():
    assert file_part("a b/c.d", "slice") == "a_b_c.d"
    assert file_part("Срез-1", "slice") == "Срез-1"
    assert file_part("..", "slice") == "slice"
    assert file_part("=cmd|x", "slice") == "_cmd_x"
