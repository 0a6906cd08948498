"""Messages for people: why a file could not be read, and numbers and sizes as the reader writes them.

The engine (``segmenter.ml``) raises ``UnreadableImage`` with a ``code`` and ``params``;
``unreadable_reason`` turns one into a sentence in the active language through the table
below. Sizes are shown in MB by ``megabytes``, numbers by ``number``.
"""

from __future__ import annotations

from django.utils.formats import number_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .ml.io.imaging import UnreadableImage

MB = 1024 * 1024
#: Numbers from this size up are shown with thousands separators ("16,777,216").
GROUPING_FROM = 10_000

#: Why a file could not be read, by ml.imaging.UnreadableImage.code, in the reader's
#: language. The English says what the engine's message says, less the details of the
#: library that failed (those are logged). Whole-number params are shown localised, and
#: a param named ``x_bytes`` is shown in MB as ``x_mb``. A code missing here is shown
#: with the engine's English message; tests/unit/test_web_reasons.py checks that none is.
UNREADABLE_REASONS = {
    # segmenter.ml.io.imaging
    "empty": gettext_lazy("the file is empty"),
    "unsupported_type": gettext_lazy("unsupported file type: expected a PNG, JPEG or DICOM slice"),
    "unsupported_layout": gettext_lazy("unsupported pixel layout %(shape)s"),
    "image_too_large": gettext_lazy(
        "the image is %(width)s×%(height)s pixels; the limit is %(limit)s pixels"
    ),
    "image_too_small": gettext_lazy(
        "the image is %(width)s×%(height)s pixels; each side must be at least %(min_side)s"
    ),
    "decompression_bomb": gettext_lazy("the image is too large to decode safely"),
    "not_an_image": gettext_lazy("not a PNG or JPEG image"),
    "damaged_image": gettext_lazy("the image file is damaged or incomplete"),
    "unsupported_mode": gettext_lazy("unsupported image mode %(mode)s"),
    "not_dicom": gettext_lazy("not a DICOM file"),
    "damaged_dicom": gettext_lazy("the DICOM file is damaged"),
    "dicom_without_image": gettext_lazy("the DICOM file holds no image (no Pixel Data element)"),
    "dicom_too_large": gettext_lazy("the DICOM image is too large"),
    "dicom_compression_unsupported": gettext_lazy(
        "this DICOM is compressed with %(syntax)s, which cannot be decoded here"
    ),
    "dicom_undecodable": gettext_lazy("the DICOM pixel data could not be decoded"),
    "dicom_frame_mismatch": gettext_lazy(
        "a compressed frame declares %(width)s×%(height)s pixels but the DICOM header says %(columns)s×%(rows)s"
    ),
    # segmenter.ml.io.headers
    "dicom_bits_allocated": gettext_lazy(
        "the DICOM image has %(bits)s bits per pixel (BitsAllocated); 8, 16 and 32 are read"
    ),
    "dicom_bits_stored": gettext_lazy(
        "the DICOM header declares %(stored)s stored bits in %(allocated)s allocated (BitsStored, BitsAllocated)"
    ),
    "dicom_pixel_representation": gettext_lazy(
        "the DICOM header's PixelRepresentation is %(value)s; it must be 0 or 1"
    ),
    "dicom_palette": gettext_lazy("the DICOM image is a palette colour picture, not a CT slice"),
    "dicom_samples": gettext_lazy(
        "the DICOM header declares %(samples)s samples per pixel with the photometric interpretation "
        "%(photometric)s; a slice has 1 (MONOCHROME1, MONOCHROME2) or 3 (RGB, YBR)"
    ),
    "dicom_planar": gettext_lazy("the DICOM colour image has no valid PlanarConfiguration (0 or 1)"),
    "dicom_pixel_data_length": gettext_lazy(
        "the DICOM pixel data hold %(actual)s bytes but the header declares %(expected)s"
    ),
    "damaged_header": gettext_lazy("the %(kind)s header is damaged"),
    "pixel_budget": gettext_lazy(
        "%(what)s would take the upload past its decoding budget of %(limit_mpixels)s million pixels "
        "(by %(over_mpixels)s million); send fewer or smaller slices"
    ),
    "several_frames": gettext_lazy("the file holds %(frames)s frames; upload it as a study instead"),
    # segmenter.ml.io.archive
    "unreadable_member": gettext_lazy("%(member)s: %(reason)s"),
    "unsafe_path": gettext_lazy("the %(kind)s contains an unsafe path (%(path)s)"),
    "not_an_archive": gettext_lazy("not a valid %(kind)s archive"),
    "damaged_archive": gettext_lazy("the %(kind)s is damaged"),
    "archive_encrypted": gettext_lazy("the %(kind)s is encrypted; upload an unencrypted archive"),
    "archive_multi_volume": gettext_lazy(
        "the %(kind)s is one volume of several, or cut short; upload the study as one complete archive"
    ),
    "archive_link": gettext_lazy(
        "%(member)s in the %(kind)s is a link; links are not followed, so put the file itself in the archive"
    ),
    "archive_special_member": gettext_lazy("%(member)s in the %(kind)s is a device or pipe, not a file"),
    "nested_archive": gettext_lazy(
        "%(member)s in the %(kind)s is itself an archive; archives inside archives are not opened, "
        "so put its slices in the outer archive"
    ),
    "archive_too_many_files": gettext_lazy("the %(kind)s holds %(count)s files; the limit is %(limit)s"),
    "archive_too_large": gettext_lazy("the %(kind)s unpacks to more than its limit of %(limit_mb)s MB"),
    "archive_member_too_large": gettext_lazy(
        "%(member)s unpacks to %(size_mb)s MB; the limit is %(limit_mb)s MB"
    ),
    "archive_bomb": gettext_lazy("%(member)s is compressed suspiciously well (a zip bomb?)"),
    "archive_ratio": gettext_lazy("the %(kind)s unpacks to more than %(ratio)s times its size (a zip bomb?)"),
    "damaged_archive_member": gettext_lazy("%(member)s in the %(kind)s is damaged"),
    "archive_member_over_limit": gettext_lazy("%(member)s unpacks to more than %(limit_mb)s MB"),
    "archive_too_many_slices": gettext_lazy("the %(kind)s holds more than %(limit)s slices"),
    "archive_without_slices": gettext_lazy("the %(kind)s holds no PNG, JPEG or DICOM slices"),
    "folder_too_many_files": gettext_lazy("the folder holds %(count)s files; the limit is %(limit)s"),
    "folder_file_too_large": gettext_lazy("%(path)s is larger than %(limit_mb)s MB"),
    "folder_too_many_slices": gettext_lazy("the folder holds more than %(limit)s slices"),
    "folder_without_slices": gettext_lazy("%(folder)s holds no PNG, JPEG or DICOM slices"),
    # segmenter.ml.io.volumes
    "damaged_gzip": gettext_lazy("the .gz file is damaged"),
    "volume_too_large": gettext_lazy("the volume unpacks to %(size_mb)s MB; the limit is %(limit_mb)s MB"),
    "volume_too_many_slices": gettext_lazy("the volume holds %(count)s slices; the limit is %(limit)s"),
    "volume_dtype": gettext_lazy("voxels of type %(dtype)s are not CT numbers (expected integers or floats)"),
    "nifti_pair": gettext_lazy(
        "this is the header of a .hdr/.img pair; upload a single .nii or .nii.gz file"
    ),
    "not_nifti": gettext_lazy("not a NIfTI volume"),
    "volume_not_3d": gettext_lazy("expected a 3-D volume, got shape %(shape)s"),
    "volume_4d": gettext_lazy("expected one 3-D volume, got %(count)s volumes (4-D)"),
    "volume_orientation": gettext_lazy("the volume's affine does not describe a proper orientation"),
    "volume_slices_too_large": gettext_lazy(
        "slices of %(width)s×%(height)s pixels exceed the limit of %(limit)s pixels"
    ),
    "damaged_volume": gettext_lazy("the volume's data are damaged"),
    # segmenter.ml.io.ctcheck
    "not_ct": gettext_lazy("this does not look like a CT slice: %(why)s"),
    # segmenter.ml.io.dicomweb
    "pacs_refused": gettext_lazy(
        "the PACS at %(server)s refused the credentials (HTTP %(status)s); check SEGMENTER_DICOMWEB_USER, "
        "SEGMENTER_DICOMWEB_PASSWORD or SEGMENTER_DICOMWEB_TOKEN"
    ),
    "pacs_not_found": gettext_lazy("the PACS at %(server)s does not know this study or series"),
    "pacs_error": gettext_lazy("the PACS at %(server)s answered with an error (HTTP %(status)s)"),
    "pacs_transfer_cut": gettext_lazy(
        "the transfer from the PACS at %(server)s broke off after %(count)s instances; try again"
    ),
    "pacs_timeout": gettext_lazy("the PACS at %(server)s did not answer in time; try again later"),
    "pacs_unreachable": gettext_lazy("the PACS at %(server)s cannot be reached"),
    "pacs_no_ct_series": gettext_lazy("the study holds no axial CT series"),
    "pacs_not_ct": gettext_lazy("the series is %(modality)s, not CT"),
    "pacs_too_many_instances": gettext_lazy("the series holds %(count)s instances; the limit is %(limit)s"),
    "pacs_instance_too_large": gettext_lazy(
        "an instance of the series holds %(size_mb)s MB of pixels; the limit is %(limit_mb)s MB"
    ),
    "pacs_series_too_large": gettext_lazy(
        "the series holds %(size_mb)s MB of pixels; the limit is %(limit_mb)s MB"
    ),
}

#: ctcheck's reasons (the "why" of "not_ct"), in the reader's language.
NOT_CT_REASONS = {
    "it is a colour picture": gettext_lazy("it is a colour picture"),
    "it has large areas of uniform grey, like a photograph, screenshot or document": gettext_lazy(
        "it has large areas of uniform grey, like a photograph, screenshot or document"
    ),
    "its grey levels are those of a photograph, not of air, lung and tissue": gettext_lazy(
        "its grey levels are those of a photograph, not of air, lung and tissue"
    ),
    "it has no dark areas of air or lung": gettext_lazy("it has no dark areas of air or lung"),
    "it has none of the fine texture of a CT scan, like a drawing or document": gettext_lazy(
        "it has none of the fine texture of a CT scan, like a drawing or document"
    ),
    "its dark and bright areas break into many small pieces, like printed text": gettext_lazy(
        "its dark and bright areas break into many small pieces, like printed text"
    ),
    "what would be lung fills the picture": gettext_lazy("what would be lung fills the picture"),
    "what would be lung falls apart into many pieces": gettext_lazy(
        "what would be lung falls apart into many pieces"
    ),
    "the networks find no consistent lungs in it": gettext_lazy(
        "the networks find no consistent lungs in it"
    ),
    "what would be lung is smoother than what surrounds it": gettext_lazy(
        "what would be lung is smoother than what surrounds it"
    ),
}


#: ctcheck's cautions (``lung_verdict``): a slice let through whose result deserves a second look.
CAUTIONS = {
    "the two networks disagree about where the lungs are": gettext_lazy(
        "the two networks disagree about where the lungs are"
    ),
}


def caution_text(name: str, caution: str, study: bool) -> str:
    """A caution of the CT check as a sentence in the active language."""
    why = str(CAUTIONS.get(caution, caution))
    if study:
        return _("This may not be a chest CT slice, or its result may be less reliable (%(name)s): %(why)s.") % {
            "name": name, "why": why,
        }
    return _("This may not be a chest CT slice, or its result may be less reliable: %(why)s.") % {"why": why}


def number(value: float, decimal_pos: int | None = None) -> str:
    """A number as written in the active language ('1,5' and '16 777 216' in Russian)."""
    return number_format(value, decimal_pos=decimal_pos, force_grouping=abs(value) >= GROUPING_FROM)


def megabytes(n_bytes: int) -> str:
    """A size in MB as people read it in the active language: rounded up to a tenth, the
    tenth shown only when it is not zero ('1', '1.1'; '1,1' in Russian). Rounding up
    keeps a size over a whole-MB limit from reading as the limit itself."""
    tenths = -(-n_bytes * 10 // MB)  # integer ceiling, exact for any size
    return number(tenths // 10) if tenths % 10 == 0 else number(tenths / 10, decimal_pos=1)


def unreadable_reason(exc: UnreadableImage) -> str:
    """Why a file could not be read, in the active language (see UNREADABLE_REASONS)."""
    template = UNREADABLE_REASONS.get(exc.code or "")
    if template is None:
        return str(exc)
    params = {}
    for key, value in exc.params.items():
        if isinstance(value, UnreadableImage):
            params[key] = unreadable_reason(value)
        elif key.endswith("_bytes"):
            params[key.removesuffix("_bytes") + "_mb"] = megabytes(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            params[key] = number(value)
        elif exc.code == "not_ct" and key == "why":
            params[key] = str(NOT_CT_REASONS.get(value, value))
        else:
            params[key] = value
    return str(template) % params
