"""The exports' geometry: label maps go back onto the input's voxel grid, whatever its axes."""

from __future__ import annotations

import gzip
import itertools

import nibabel as nib
import numpy as np
import pytest

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from segmenter.ml.io.imaging import CTSlice
from segmenter.ml.io.volumes import _header, _orientation
from segmenter.ml.results.exports import export_labels, labels_nifti, source_geometry

SHAPE = (16, 18, 17)  # uneven (each side at least MIN_SLICE_SIDE), so that a swapped axis cannot pass


def _geometry(affine: np.ndarray, shape=SHAPE):
    """The VolumeGeometry read_nifti builds for a volume with this affine (via its slices)."""
    from segmenter.ml.io.volumes import read_nifti

    data = np.zeros(shape, np.int16)
    return read_nifti(nib.Nifti1Image(data, affine).to_bytes(), "v.nii")[0].volume


def _affines():
    """Every axis permutation with every combination of flips."""
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            affine = np.zeros((4, 4))
            for array_axis, (world, sign) in enumerate(zip(perm, signs)):
                affine[world, array_axis] = sign * (0.5 + array_axis)
            affine[3, 3] = 1
            yield affine


@pytest.mark.parametrize("affine", list(_affines()), ids=lambda a: str(np.sign(a[:3, :3].sum(axis=0)).astype(int)))
def test_displayed_planes_go_back_to_the_voxels_they_came_from_in_every_orientation(affine):
    geometry = _geometry(affine)
    assert geometry.shape == SHAPE and np.allclose(geometry.affine, affine)
    volume = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    si_axis = geometry.si[0]
    planes = [geometry.to_display(np.take(volume, k, axis=si_axis)) for k in geometry.slice_indices()]
    assert np.array_equal(geometry.volume_from_display(planes), volume)


@pytest.mark.parametrize("affine", list(_affines())[::7])
def test_the_label_volume_reads_back_in_nibabels_canonical_orientation_as_displayed(affine):
    geometry = _geometry(affine)
    rng = np.random.default_rng(0)
    shown = [rng.integers(0, 4, (SHAPE[geometry.ap[0]], SHAPE[geometry.lr[0]]), dtype=np.uint8) for _ in geometry.slice_indices()]
    slices = [CTSlice(pixels=p, name="v", volume=geometry, volume_index=k) for p, k in zip(shown, geometry.slice_indices())]
    image = nib.Nifti1Image.from_bytes(gzip.decompress(labels_nifti(shown, source_geometry(slices))))
    assert image.shape == SHAPE and np.allclose(image.affine, affine)
    # RAS+ canonical (x to the right, y anterior, z superior) -> display: slices head to
    # feet, rows anterior to posterior, columns from the patient's right to their left.
    canonical = np.asarray(nib.as_closest_canonical(image).dataobj)
    displayed = canonical[::-1, ::-1, ::-1].transpose(2, 1, 0)
    for plane, labels in zip(displayed, shown):
        assert np.array_equal(plane, export_labels(labels))


def test_exported_label_values_put_background_at_zero_and_follow_medseg_for_the_lesions():
    labels = np.array([[GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND]], np.uint8)
    assert export_labels(labels).tolist() == [[1, 2, 3, 0]]


def test_slices_from_images_or_of_a_volume_read_in_part_have_no_geometry():
    geometry = _geometry(np.eye(4))
    assert source_geometry([CTSlice(pixels=np.zeros((16, 16), np.uint8), name="a.png")]) is None
    partial = [CTSlice(pixels=np.zeros((18, 16), np.uint8), name="v", volume=geometry, volume_index=k) for k in (16, 15)]
    assert source_geometry(partial) is None


def test_the_orientation_helper_agrees_with_the_reader():
    header = _header(nib.Nifti1Image(np.zeros(SHAPE, np.int16), np.diag([-1.0, 1.0, 1.0, 1.0])).to_bytes())
    assert _orientation(header) == {0: (0, -1), 1: (1, 1), 2: (2, 1)}
