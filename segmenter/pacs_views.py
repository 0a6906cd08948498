"""The page "From a PACS" (only when SEGMENTER_DICOMWEB_URL is set): search the PACS for CT
studies (QIDO-RS), list a study's series with their slice counts, analyse one (the usual
progress page follows) and send results back. Patient names and IDs are shown here only,
as the PACS returns them; nothing of them is stored."""

from __future__ import annotations

import re
import secrets

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST, require_safe

from . import pacs, selectors, services, uploads
from .views import _analysis, _browser_token, _remember_browser

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def _configured() -> None:
    if not pacs.configured():
        raise Http404("no PACS is configured")


@require_safe
def search(request):
    _configured()
    query = {
        k: request.GET.get(k, "").strip()[:64] for k in ("patient_id", "accession", "date_from", "date_to")
    }
    ctx = {"query": query, "studies": None, "error": ""}
    if any(query.values()):
        dates = [query[k] for k in ("date_from", "date_to") if query[k]]
        if not all(DATE.match(d) for d in dates):
            ctx["error"] = _("Dates are written YYYY-MM-DD.")
        else:
            try:
                ctx["studies"] = pacs.studies_search(
                    patient_id=query["patient_id"],
                    accession=query["accession"],
                    date_from=query["date_from"].replace("-", ""),
                    date_to=query["date_to"].replace("-", ""),
                )
            except uploads.UploadError as exc:
                ctx["error"] = str(exc)
    return render(request, "segmenter/pacs_search.html", ctx, status=400 if ctx["error"] else 200)


@require_safe
def study(request, study_uid: str):
    _configured()
    if not UID.match(study_uid):
        raise Http404("not a UID")
    ctx = {"study": study_uid, "series": [], "error": ""}
    try:
        ctx["series"] = pacs.series_list(study=study_uid)
    except uploads.UploadError as exc:
        ctx["error"] = str(exc)
    return render(request, "segmenter/pacs_study.html", ctx, status=400 if ctx["error"] else 200)


@require_POST
def analyse(request):
    _configured()
    token = _browser_token(request) or secrets.token_urlsafe(32)
    try:
        analysis = services.analysis_create_from_pacs(
            url=request.POST.get("url", ""),
            send=request.POST.get("send") == "1",
            browser=selectors.browser_key(token),
        )
    except uploads.UploadError as exc:
        ctx = {"study": "", "series": [], "error": str(exc)}
        return render(request, "segmenter/pacs_study.html", ctx, status=exc.status_code)
    return _remember_browser(redirect("segmenter:analysis", analysis_id=analysis.id), token)


@require_POST
def send(request, analysis_id):
    analysis = _analysis(analysis_id)
    try:
        pacs.analysis_send(analysis=analysis)
        messages.success(request, _("The DICOM SEG and the measurement report were stored on the PACS."))
    except uploads.UploadError as exc:
        messages.error(request, str(exc))
    return redirect(reverse("segmenter:analysis", args=[analysis.id]) + "#pacs")
