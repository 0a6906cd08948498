import gzip

import nibabel as nib
import numpy as np
import pytest

from segmenter.ml.io.imaging import UnreadableImage, read_slice
from segmenter.ml.io.volumes import read_nifti


@pytest.fixture(scope="module")
def stack(data_root):
    """Two real DICOM slices as an (x, y, z) HU volume in RAS+ voxel order, and the
    display images the DICOM reader gives for each (head to feet)."""
    cts = [read_slice(data_root / "dicom-samples" / f"{k}.dcm") for k in (0, 1)]
    import pydicom
    from pydicom.pixels import apply_modality_lut

    hu = [apply_modality_lut(pydicom.dcmread(data_root / "dicom-samples" / f"{k}.dcm").pixel_array,
                             pydicom.dcmread(data_root / "dicom-samples" / f"{k}.dcm")).astype(np.int16) for k in (0, 1)]
    # DICOM display: rows run anterior->posterior, columns patient right->left. In RAS+
    # voxel order x runs left->right, y posterior->anterior, z inferior->superior.
    # Slice 0 is the upper one (z index 1).
    vol = np.stack([np.flipud(np.fliplr(h)).T for h in reversed(hu)], axis=-1)
    return vol, [c.pixels for c in cts]


def _nifti(vol, affine) -> bytes:
    img = nib.Nifti1Image(vol, affine)
    img.header.set_zooms((0.625, 0.625, 1.25))
    return img.to_bytes()


def test_a_ras_volume_reads_as_axial_slices_in_display_orientation(stack, data_root):
    vol, expected = stack
    affine = np.diag([0.625, 0.625, 1.25, 1.0])
    slices = read_nifti(_nifti(vol, affine), "ct.nii")
    assert len(slices) == 2
    for got, want in zip(slices, expected):
        assert np.array_equal(got.pixels, want)
    assert slices[0].calibrated and slices[0].pixel_spacing_mm == (0.625, 0.625)
    assert slices[0].slice_thickness_mm == 1.25
    # The HU in display orientation, as the DICOM reader gives them for the same slice.
    hu0 = read_slice(data_root / "dicom-samples" / "0.dcm").hu
    assert slices[0].hu.dtype == np.int16 and np.array_equal(slices[0].hu, hu0)


def test_flipped_and_permuted_axes_give_the_same_slices(stack):
    vol, expected = stack
    # LPS voxel order (x runs right->left, y anterior->posterior), axes stored as (z, y, x)
    lps = vol[::-1, ::-1, :].transpose(2, 1, 0)
    affine = np.array(
        [[0, 0, -0.625, 0], [0, -0.625, 0, 0], [1.25, 0, 0, 0], [0, 0, 0, 1]], float
    )
    img = nib.Nifti1Image(lps, affine)
    slices = read_nifti(img.to_bytes(), "lps.nii")
    for got, want in zip(slices, expected):
        assert np.array_equal(got.pixels, want)


def test_scaled_and_gzipped_volumes_keep_hounsfield_units(stack):
    vol, expected = stack
    img = nib.Nifti1Image(((vol.astype(np.float32) + 1024) / 2).astype(np.int16), np.diag([0.625, 0.625, 1.25, 1]))
    img.header.set_slope_inter(2.0, -1024.0)
    slices = read_nifti(gzip.compress(img.to_bytes()), "ct.nii.gz")
    diff = np.abs(slices[0].pixels.astype(int) - expected[0].astype(int))
    assert diff.max() <= 1  # halving the stored values rounds by at most 1 HU


def declaring(shape, dtype=np.int16, affine=None, body=0) -> bytes:
    """A NIfTI header that declares ``shape`` voxels, followed by only ``body`` bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([0.7, 0.7, 1.0, 1.0]) if affine is None else affine, code=1)
    header.set_qform(None, code=0)
    header.set_data_offset(352)
    raw = header.binaryblock + b"\0" * (352 - 348)
    return raw + b"\0" * body


def test_a_gzip_bomb_is_refused_from_its_header_before_it_is_inflated():
    bomb = gzip.compress(declaring((512, 512, 600), body=64 * 1024 * 1024))  # 64 MB of zeros, ~65 KB gzipped
    with pytest.raises(UnreadableImage, match="unpacks to 314,573,152 bytes; the limit is 1,048,576") as caught:
        read_nifti(bomb, "bomb.nii.gz", max_bytes=1024 * 1024)
    assert caught.value.code == "volume_too_large"


def test_the_header_is_held_to_the_slice_count_and_the_pixel_budget():
    with pytest.raises(UnreadableImage) as caught:
        read_nifti(gzip.compress(declaring((512, 512, 1001))), "long.nii.gz")
    assert (caught.value.code, caught.value.params["count"]) == ("volume_too_many_slices", 1001)
    with pytest.raises(UnreadableImage) as caught:
        read_nifti(declaring((1024, 1024, 400)), "big.nii")  # 419 million voxels
    assert caught.value.code == "pixel_budget"


def test_a_volume_of_one_by_one_pixel_slices_is_refused_at_once():
    with pytest.raises(UnreadableImage) as caught:
        read_nifti(gzip.compress(declaring((1, 1, 30_000))), "needle.nii.gz", max_slices=10**9)
    assert caught.value.code == "image_too_small"


@pytest.mark.parametrize("affine", [np.zeros((4, 4)), np.full((4, 4), np.nan)], ids=["zero", "nan"])
def test_a_zero_or_nan_affine_is_refused_as_no_geometry(affine):
    with pytest.raises(UnreadableImage) as caught:
        read_nifti(declaring((32, 32, 2), affine=affine, body=32 * 32 * 2 * 2), "x.nii")
    assert caught.value.code == "volume_orientation"


def test_rgb_voxels_are_refused_as_not_ct_numbers():
    img = nib.Nifti1Image(np.zeros((32, 32, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4))
    with pytest.raises(UnreadableImage) as caught:
        read_nifti(img.to_bytes(), "rgb.nii")
    assert caught.value.code == "volume_dtype"


def test_a_volume_cut_short_is_damaged():
    with pytest.raises(UnreadableImage) as caught:
        read_nifti(gzip.compress(declaring((64, 64, 4), body=1000)), "cut.nii.gz")
    assert caught.value.code == "damaged_volume"


def test_a_4d_series_is_refused():
    img = nib.Nifti1Image(np.zeros((32, 32, 4, 2), np.int16), np.eye(4))
    with pytest.raises(UnreadableImage, match="4-D"):
        read_nifti(img.to_bytes(), "fmri.nii")


def test_what_is_not_nifti_is_refused():
    with pytest.raises(UnreadableImage, match="not a NIfTI"):
        read_nifti(b"\0" * 500, "x.nii")


def test_a_volumes_slices_are_made_one_at_a_time_when_reached():
    """read_nifti holds the voxels once; each slice's pixels and HU exist only while held."""
    import weakref

    from segmenter.ml.io.volumes import VolumeSlices

    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 400, size=(64, 64, 40), dtype=np.int16)
    slices = read_nifti(_nifti(vol, np.diag([0.625, 0.625, 1.25, 1.0])), "ct.nii")
    assert isinstance(slices, VolumeSlices) and len(slices) == 40
    first = slices[0]
    assert slices[0] is not first and np.array_equal(slices[0].pixels, first.pixels)  # made afresh
    assert slices[-1].name == "ct.nii[40]" and [s.name for s in slices[1:3]] == ["ct.nii[2]", "ct.nii[3]"]
    refs = [weakref.ref(s.hu) for s in slices]  # iterate: each slice dropped before the next
    assert all(r() is None for r in refs)
    with pytest.raises(IndexError):
        slices[40]


def test_a_volumes_slices_pass_the_ct_check_by_construction():
    """upload_read does not run check_ct over a volume: every slice of one is calibrated
    and grey, which check_ct accepts whatever the pixels look like."""
    from segmenter.ml.io.ctcheck import why_not_ct

    flat = np.full((64, 64, 3), 40, np.int16)  # uniform mid grey: refused as a picture
    for ct in read_nifti(_nifti(flat, np.diag([0.625, 0.625, 1.25, 1.0])), "flat.nii"):
        assert ct.calibrated and ct.colour_share == 0.0
        assert why_not_ct(ct) is None


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("gz", [False, True])
def test_every_axis_order_read_from_an_open_file_gives_nibabels_slices(tmp_path, order, gz):
    """Slices read one at a time from the file (contiguous, per column, or whole) are the
    planes nibabel gives for the same volume, big-endian included."""
    rng = np.random.default_rng(1)
    vol = rng.integers(-1000, 1000, size=(40, 48, 6), dtype=np.int16).transpose(order)
    affine = np.eye(4)[:, list(order) + [3]]
    img = nib.Nifti1Image(vol.astype(">i2"), affine)
    path = tmp_path / ("v.nii.gz" if gz else "v.nii")
    nib.save(img, path)
    si = order.index(2)
    want = np.asarray(nib.load(path).dataobj)
    with open(path, "rb") as fh, read_nifti(fh, path.name) as slices:
        assert len(slices) == 6
        for ct in slices:
            where = [slice(None)] * 3
            where[si] = ct.volume_index
            plane = ct.volume.from_display(ct.hu)
            assert np.array_equal(plane, want[tuple(where)])


def test_a_gzipped_volume_lives_in_a_temporary_file_not_in_memory():
    """Reading and iterating a 24 MB volume allocates about one slice at a time; closing
    it closes (and so removes) its unnamed temporary file."""
    import tracemalloc

    vol = np.full((512, 512, 48), -800, np.int16)
    data = gzip.compress(_nifti(vol, np.diag([0.625, 0.625, 1.25, 1.0])), compresslevel=1)
    tracemalloc.start()
    try:
        slices = read_nifti(data, "big.nii.gz")
        for _ in slices:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MB traced for a {vol.nbytes / 2**20:.0f} MB volume"
    scratch = slices._voxels.file
    assert not scratch.closed
    slices.close()
    assert scratch.closed


def test_a_truncated_gzipped_volume_leaves_no_temporary_file_open(monkeypatch):
    import tempfile

    opened = []
    real = tempfile.TemporaryFile

    def recording(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", recording)
    with pytest.raises(UnreadableImage, match="cut short"):
        read_nifti(gzip.compress(declaring((64, 64, 4), body=1000)), "cut.nii.gz")
    assert opened and all(f.closed for f in opened)


def test_a_damaged_gzipped_volume_is_refused_as_damaged(stack):
    vol, _ = stack
    data = bytearray(gzip.compress(_nifti(vol, np.diag([0.625, 0.625, 1.25, 1.0]))))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # deflate blocks past the header
    with pytest.raises(UnreadableImage) as caught:
        read_nifti(bytes(data), "damaged.nii.gz")
    assert caught.value.code in ("damaged_gzip", "damaged_volume")
