"""Web pages and downloads: thin glue between requests, the services and the templates.

Views fetch what they show through the private helpers below (``_analysis``,
``_slice``), so unknown ids are a 404 everywhere; uploads pass the size gate of
``uploads`` and go to ``services.analysis_create``; reports, the study zip and exports
come from ``exports``, overlays from the ``ml`` package.
No file is served from MEDIA_URL: each is streamed here after its UUID was looked up.
"""

from __future__ import annotations

import io
import secrets
import tempfile

import numpy as np
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponseBadRequest, JsonResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_safe

from . import exports, selectors, services, uploads
from .forms import LAYER_LABELS, UploadForm, overlay_query, overlay_styles, page_styles
from .ml.constants import MODEL_WINDOW_LEVEL_HU, MODEL_WINDOW_WIDTH_HU
from .ml.results.overlay import (
    DEFAULT_STYLES,
    HU_PNG_OFFSET,
    LAYERS,
    png_bytes,
    render_overlay,
    thumbnail,
)
from .models import Analysis, Slice
from .processing import THUMBNAIL_SIDE_PX

#: The signed cookie that ties "my analyses" to this browser: a random token, signed with
#: SECRET_KEY under this salt; the database keeps only its hash (selectors.browser_key).
BROWSER_COOKIE = "segmenter_browser"
BROWSER_COOKIE_SALT = "segmenter.views.browser"
BROWSER_COOKIE_MAX_AGE_S = 365 * 24 * 3600
#: A study zip is built in memory up to this size, in a private temporary file beyond it.
ZIP_SPOOL_BYTES = 32 * 1024 * 1024
#: How often the progress page asks for news.
PROGRESS_POLL_MS = 1000
# Rows of a study's slice table per page (the plot always shows the whole study).
STUDY_TABLE_ROWS = 100
#: How long browsers may keep a slice's files (they never change once stored).
FILE_MAX_AGE_S = 3600
#: The viewer's window presets for slices with Hounsfield units, (width, level) in HU,
#: in the order of its buttons; "model" is the window the networks read, as stored in
#: the grey PNG.
WINDOW_PRESETS = {
    "model": (MODEL_WINDOW_WIDTH_HU, MODEL_WINDOW_LEVEL_HU),
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 40.0),
    "bone": (2000.0, 300.0),
}
#: A slice number that cannot occur, replaced by "{index}" in the viewer's URL templates.
_INDEX_PLACEHOLDER = 987654321
UNREADABLE_BODY_ERRORS = (
    MultiPartParserError,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
    UnreadablePostError,
)


# --- Lookups -------------------------------------------------------------------------------


def _analysis(analysis_id) -> Analysis:
    try:
        return selectors.analysis_get(analysis_id=analysis_id)
    except Analysis.DoesNotExist:
        raise Http404("no such analysis") from None


def _done_analysis(analysis_id) -> Analysis:
    analysis = _analysis(analysis_id)
    if analysis.status != Analysis.Status.DONE:
        raise Http404("the analysis has no result")
    return analysis


def _slice(analysis: Analysis, index: int) -> Slice:
    try:
        return analysis.slices.get(index=index)
    except Slice.DoesNotExist:
        raise Http404("no such slice") from None


# --- Upload --------------------------------------------------------------------------------


@csrf_exempt  # checked in _upload once the size is known: the CSRF check reads the whole body
@require_http_methods(["GET", "HEAD", "POST"])
def home(request):
    if request.method == "POST":
        return _upload(request)
    return render(request, "segmenter/home.html", _home_context(request))


def _browser_token(request) -> str:
    """This browser's token from its signed cookie, or "" (none, or tampered with)."""
    return request.get_signed_cookie(BROWSER_COOKIE, default="", salt=BROWSER_COOKIE_SALT) or ""


def _remember_browser(response, token: str):
    response.set_signed_cookie(
        BROWSER_COOKIE, token, salt=BROWSER_COOKIE_SALT, max_age=BROWSER_COOKIE_MAX_AGE_S,
        httponly=True, samesite="Lax", secure=settings.SESSION_COOKIE_SECURE,
    )
    return response


def _home_context(request, error: str = "") -> dict:
    token = _browser_token(request)
    return {
        "form": UploadForm(),
        "error": error,
        "mine": selectors.analyses_of_browser(browser=selectors.browser_key(token)) if token else [],
        "upload_config": {
            "maxBytes": settings.SEGMENTER_MAX_UPLOAD_BYTES,
            "strings": {
                "chosen": _("Selected: %(name)s"),
                "choose": _("Choose a file to upload."),
                "tooLarge": uploads.too_large_message(),
                "uploading": _("Uploading… %(percent)s"),
                "analysing": _("Uploaded. Analysing… a large study can take a few minutes."),
                "failed": _("The upload failed; check the connection and try again."),
            },
        },
    }


def _upload(request):
    try:
        uploads.body_length_check(request.META.get("CONTENT_LENGTH"))
    except uploads.UploadError as exc:
        return _refuse(request, str(exc), exc.status_code)
    try:
        request.FILES  # noqa: B018 - parse the body here, so that a malformed one is answered here
    except UNREADABLE_BODY_ERRORS:
        return _refuse(request, _("The upload could not be read; please choose the file and send it again."))
    csrf_failure = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    if csrf_failure is not None:
        return csrf_failure
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _refuse(request, form.errors["file"][0])
    upload = form.cleaned_data["file"]
    token = _browser_token(request) or secrets.token_urlsafe(32)
    try:
        analysis = services.analysis_create(
            stream=upload, name=upload.name, size=upload.size, browser=selectors.browser_key(token)
        )
    except uploads.UploadError as exc:
        return _refuse(request, str(exc), exc.status_code)
    if analysis.kind == Analysis.Kind.SLICE and analysis.status == Analysis.Status.DONE:
        url = reverse("segmenter:slice", args=[analysis.id, 1])  # straight to the result
    else:
        url = reverse("segmenter:analysis", args=[analysis.id])
    response = JsonResponse({"url": url}) if _wants_json(request) else redirect(url)
    return _remember_browser(response, token)


@require_http_methods(["POST"])
def analysis_delete(request, analysis_id):
    """Delete one of this browser's analyses, with its files; anyone else's is a 404."""
    token = _browser_token(request)
    try:
        analysis = Analysis.objects.get(pk=analysis_id, browser=selectors.browser_key(token)) if token else None
    except Analysis.DoesNotExist:
        analysis = None
    if analysis is None:
        raise Http404("no such analysis")
    services.analysis_delete(analysis=analysis)
    return redirect(reverse("segmenter:home") + "#mine")


def _wants_json(request) -> bool:
    return (
        request.headers.get("X-Requested-With") == "XMLHttpRequest"
        or "application/json" in request.headers.get("Accept", "")
    )


def _refuse(request, message: str, status: int = 400):
    """The upload form again with the reason, or {"error": reason} for a script."""
    if _wants_json(request):
        return JsonResponse({"error": message}, status=status)
    return render(request, "segmenter/home.html", _home_context(request, message), status=status)


# --- Results ---------------------------------------------------------------------------------


@require_safe
def analysis(request, analysis_id):
    """A study's result, a slice's result (redirect), progress, or the failure."""
    analysis = _analysis(analysis_id)
    ctx = {"analysis": analysis}
    if analysis.status == Analysis.Status.FAILED:
        return render(request, "segmenter/failed.html", ctx)
    if analysis.status != Analysis.Status.DONE:
        ctx["progress"] = _progress(analysis)
        ctx["progress_config"] = {
            "statusUrl": reverse("segmenter:status", args=[analysis.id]),
            "intervalMs": PROGRESS_POLL_MS,
            "strings": {"count": _("%(done)s of %(total)s slices analysed")},
        }
        return render(request, "segmenter/progress.html", ctx)
    if analysis.kind == Analysis.Kind.SLICE:
        return redirect("segmenter:slice", analysis_id=analysis.id, index=1)
    ctx["slices"] = list(analysis.slices.all())
    ctx["exports"] = exports.exports_available(analysis=analysis)
    ctx["page"] = Paginator(ctx["slices"], STUDY_TABLE_ROWS).get_page(request.GET.get("page"))
    first = ctx["slices"][0] if ctx["slices"] else None
    ctx.update(_viewer_context(request, analysis, ctx["slices"], first, stack=True))
    return render(request, "segmenter/study.html", ctx)


@require_safe
def analysis_status(request, analysis_id):
    """Progress as JSON, polled by the progress page."""
    return JsonResponse(_progress(_analysis(analysis_id)))


def _progress(analysis: Analysis) -> dict:
    return {
        "status": analysis.status,
        "status_label": _("retrying") if analysis.retrying else analysis.get_status_display(),
        "retrying": analysis.retrying,
        "retry_note": _retry_note(analysis) if analysis.retrying else "",
        "finished": analysis.is_finished,
        "slices_done": analysis.slices_done,
        "slices_total": analysis.slices_total,
        "url": reverse("segmenter:analysis", args=[analysis.id]),
    }


def _retry_note(analysis: Analysis) -> str:
    return _(
        "The worker processing it stopped; it runs again from the start (run %(run)s of at most %(limit)s)."
    ) % {"run": max(analysis.attempts + (analysis.status == Analysis.Status.QUEUED), 2),
         "limit": settings.SEGMENTER_MAX_ATTEMPTS}


@require_safe
def slice_detail(request, analysis_id, index):
    analysis = _analysis(analysis_id)
    if analysis.status != Analysis.Status.DONE:
        return redirect("segmenter:analysis", analysis_id=analysis.id)
    slice_ = _slice(analysis, index)
    ctx = {
        "analysis": analysis,
        "slice": slice_,
        "exports": exports.exports_available(analysis=analysis),
        "previous_index": index - 1 if index > 1 else None,
        "next_index": index + 1 if index < analysis.slices_total else None,
        "study_page": (index - 1) // STUDY_TABLE_ROWS + 1,  # where "Back to the study" lands
        # Previous and next keep the layer choices (the script keeps this query in step).
        "layer_query": f"?{request.GET.urlencode()}" if "layers" in request.GET else "",
        **_viewer_context(request, analysis, [slice_], slice_, stack=False),
    }
    return render(request, "segmenter/slice.html", ctx)


def _url_template(name: str, analysis: Analysis) -> str:
    """The URL of a slice's file with "{index}" for its number, for the viewer's script."""
    return reverse(name, args=[analysis.id, _INDEX_PLACEHOLDER]).replace(str(_INDEX_PLACEHOLDER), "{index}")


def _viewer_context(request, analysis: Analysis, slices: list[Slice], shown: Slice | None, *, stack: bool) -> dict:
    """What the stack viewer (templates/segmenter/_viewer.html, static/segmenter/viewer.js)
    needs: the layer controls from the query, the server-rendered fallback of ``shown``,
    and, as JSON, the slices it can move through (``stack``: the whole study, with the
    position in the address as #slice=N; else just ``shown``)."""
    styles, mask_only = page_styles(request.GET)
    ctx = {
        "layers": [
            {
                "name": n, "label": LAYER_LABELS[n], "value": LAYERS[n], "style": styles[n],
                "outline": request.GET.get(f"{n}_draw") == "outline",
            }
            for n in LAYERS
        ],
        "mask_only": mask_only,
        "view_mode": request.GET.get("view", ""),
        "layer_form_action": request.path,
        "viewer_stack": stack,
        "viewer_windowed": any(s.hu for s in slices),
        "window_presets": [
            {"name": name, "label": label, "width": f"{w:g}", "level": f"{lv:g}".replace("-", "\u2212")}
            for (name, (w, lv)), label in zip(WINDOW_PRESETS.items(), _window_labels())
        ],
    }
    if shown is None:
        return ctx
    urls = {n: reverse(f"segmenter:slice_{n}", args=[analysis.id, shown.index]) for n in ("image", "labels", "overlay")}
    ctx.update(
        urls=urls,
        shown=shown,
        overlay_url=f"{urls['overlay']}?{overlay_query(styles, mask_only)}",
        viewer_data={
            "slices": [
                {"index": s.index, "name": s.name, "width": s.width, "height": s.height, "hu": bool(s.hu)}
                for s in slices
            ],
            "start": shown.index,
            "stack": stack,
            "urls": {
                name: _url_template(f"segmenter:slice_{name}", analysis)
                for name in ("image", "labels", "hu", "overlay")
            }
            | {"page": _url_template("segmenter:slice", analysis)},
            "labelsOf": {n: LAYERS[n] for n in LAYERS},
            "huOffset": HU_PNG_OFFSET,
            "windows": {name: list(wl) for name, wl in WINDOW_PRESETS.items()},
        },
        viewer_strings={
            "unavailable": _("The interactive view could not load; the image shows the default layers."),
            "position": _("slice %(index)s / %(total)s"),
            "window": _("W %(width)s / L %(level)s"),
            "zoom": _("zoom %(percent)s"),
        },
    )
    return ctx


def _window_labels() -> list[str]:
    return [_("As analysed"), _("Lung"), _("Mediastinum"), _("Bone")]


# --- Downloads -------------------------------------------------------------------------------


def _attachment(content, filename: str, **kwargs) -> FileResponse:
    stream = io.BytesIO(content) if isinstance(content, bytes) else content
    return FileResponse(stream, as_attachment=True, filename=filename, **kwargs)


def _cached(response):
    patch_cache_control(response, private=True, max_age=FILE_MAX_AGE_S)
    return response


def _open(field):
    """A stored file of a slice, opened for reading; a 404 if it has gone missing."""
    try:
        return field.open("rb")
    except FileNotFoundError:
        raise Http404("the file is missing from storage") from None


def _grey(slice_: Slice) -> np.ndarray:
    try:
        return exports.slice_grey(slice_)
    except FileNotFoundError:
        raise Http404("the file is missing from storage") from None


def _labels(slice_: Slice) -> np.ndarray:
    try:
        return exports.slice_labels(slice_)
    except FileNotFoundError:
        raise Http404("the file is missing from storage") from None


@require_safe
def slice_image(request, analysis_id, index):
    """The slice as stored: 8-bit grey PNG in the lung window."""
    slice_ = _slice(_done_analysis(analysis_id), index)
    return _cached(_attachment(_open(slice_.image), f"{slice_.stem}-slice.png"))


@require_safe
def slice_labels(request, analysis_id, index):
    """The label map PNG: 0 GGO, 1 consolidation, 2 other lung, 3 outside the lungs."""
    slice_ = _slice(_done_analysis(analysis_id), index)
    return _cached(_attachment(_open(slice_.labels), f"{slice_.stem}-labels.png"))


@require_safe
def slice_hu(request, analysis_id, index):
    """The slice's Hounsfield units as an RGB PNG (ml.overlay.pack_hu: R high byte, G low
    byte of HU + 32768), for the viewer's window/level; a 404 for slices without HU."""
    slice_ = _slice(_done_analysis(analysis_id), index)
    if not slice_.hu:
        raise Http404("this slice carries no Hounsfield units")
    return _cached(_attachment(_open(slice_.hu), f"{slice_.stem}-hu.png"))


@require_safe
def slice_overlay(request, analysis_id, index):
    """The coloured overlay with the layers, colours and opacities named in the query."""
    slice_ = _slice(_done_analysis(analysis_id), index)
    try:
        styles, mask_only = overlay_styles(request.GET)
    except ValueError as exc:
        return HttpResponseBadRequest(_("Invalid overlay settings: %(reason)s") % {"reason": exc})
    name = f"{slice_.stem}-overlay.png"
    if slice_.overlay and styles == DEFAULT_STYLES and not mask_only:  # made when it was processed
        return _cached(_attachment(_open(slice_.overlay), name))
    rgb = render_overlay(_grey(slice_), _labels(slice_), styles, mask_only)
    return _cached(_attachment(png_bytes(rgb), name))


@require_safe
def slice_thumbnail(request, analysis_id, index):
    """A small overlay with the default layers, for the study's gallery."""
    slice_ = _slice(_done_analysis(analysis_id), index)
    if slice_.thumbnail:  # made when it was processed
        return _cached(FileResponse(_open(slice_.thumbnail), content_type="image/png"))
    small = thumbnail(render_overlay(_grey(slice_), _labels(slice_)), THUMBNAIL_SIDE_PX)
    return _cached(FileResponse(io.BytesIO(png_bytes(small)), content_type="image/png"))


@require_safe
def report_csv_download(request, analysis_id):
    analysis = _done_analysis(analysis_id)
    text, _report = exports.reports(analysis)
    return _attachment(text.encode(), exports.download_name(analysis, "report.csv"), content_type="text/csv; charset=utf-8")


@require_safe
def report_json_download(request, analysis_id):
    analysis = _done_analysis(analysis_id)
    _text, report = exports.reports(analysis)
    return _attachment(
        exports.json_text(report).encode(), exports.download_name(analysis, "report.json"), content_type="application/json"
    )


def _export(analysis_id, export: str) -> FileResponse:
    analysis = _done_analysis(analysis_id)
    try:
        stream, filename, content_type = exports.export_open(analysis=analysis, export=export)
    except LookupError:
        raise Http404("the analysis has no such export") from None
    return _attachment(stream, filename, content_type=content_type)


@require_safe
def labels_nifti_download(request, analysis_id):
    """The label volume on the input's voxel grid (a NIfTI volume's or a DICOM series')."""
    return _export(analysis_id, exports.LABELS_NIFTI)


@require_safe
def dicom_seg_download(request, analysis_id):
    """A DICOM SEG of GGO and consolidation that references the source DICOM series."""
    return _export(analysis_id, exports.DICOM_SEG)


@require_safe
def study_zip(request, analysis_id):
    """Every slice's grey image, overlay (default layers) and label map, with report.csv
    and report.json."""
    analysis = _done_analysis(analysis_id)
    spool = tempfile.SpooledTemporaryFile(max_size=ZIP_SPOOL_BYTES)  # noqa: SIM115 - FileResponse closes it
    try:
        exports.study_zip_write(spool, analysis)
    except FileNotFoundError:
        spool.close()
        raise Http404("a file of the study is missing from storage") from None
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return _attachment(spool, exports.download_name(analysis, "study.zip"), content_type="application/zip")
