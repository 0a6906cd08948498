"""Names of what is written for a slice: its stem, shared by downloads and the command line."""

import pytest

from segmenter.ml.io.names import slice_stem


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
