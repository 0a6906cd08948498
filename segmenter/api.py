"""JSON API under /api/v1/, described by the OpenAPI document drf-spectacular generates.

    POST /api/v1/analyses          multipart field "file" -> 201 (processed) or 202 (queued)
    GET  /api/v1/analyses/{id}     -> 200, or 404
    GET  /api/v1/openapi.json      the OpenAPI 3 document

Uploads go through the same services as the web page, so an analysis made by one is
viewable by the other. Every error is ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

import logging
import uuid

from django.http import Http404
from django.urls import reverse
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from . import exports, selectors, services, uploads
from .ml.results.reports import DISCLAIMER
from .ml.results.severity import GRADES
from .models import Analysis

log = logging.getLogger(__name__)


# --- Serializers (they document the schema; the data comes from analysis_data) ------------


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="What is wrong, for the person who sent the request.")


class SideSerializer(serializers.Serializer):
    lesion_percent = serializers.FloatField(allow_null=True)
    grade = serializers.ChoiceField(choices=GRADES, allow_null=True)


class SeveritySerializer(serializers.Serializer):
    grade = serializers.ChoiceField(
        choices=GRADES, allow_null=True, help_text="Moscow CT-0...CT-4 grade; null when no lung was found."
    )
    lesion_percent = serializers.FloatField(allow_null=True, help_text="GGO + consolidation, % of the lung.")
    ggo_percent = serializers.FloatField(allow_null=True)
    consolidation_percent = serializers.FloatField(allow_null=True)
    right = SideSerializer(help_text="The patient's right lung (null values when the lungs are not side by side).")
    left = SideSerializer()
    message = serializers.CharField(help_text="The grade's meaning, or 'no lung found'.")


class VolumesSerializer(serializers.Serializer):
    ggo_ml = serializers.FloatField(allow_null=True)
    consolidation_ml = serializers.FloatField(allow_null=True)
    lesion_ml = serializers.FloatField(allow_null=True)
    lung_ml = serializers.FloatField(allow_null=True)


class SliceLinksSerializer(serializers.Serializer):
    page = serializers.URLField()
    image = serializers.URLField()
    overlay = serializers.URLField()
    labels = serializers.URLField(help_text="Label map PNG: 0 GGO, 1 consolidation, 2 other lung, 3 background.")


class SliceSerializer(serializers.Serializer):
    index = serializers.IntegerField(min_value=1)
    name = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    severity = SeveritySerializer()
    volumes = VolumesSerializer()
    links = SliceLinksSerializer()


class ProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField(min_value=0)
    total = serializers.IntegerField(min_value=0)
    retrying = serializers.BooleanField(
        help_text="A worker processing it stopped; it is queued or running again, from the start."
    )


class AnalysisLinksSerializer(serializers.Serializer):
    self = serializers.URLField()
    page = serializers.URLField()
    report_csv = serializers.URLField(allow_null=True)
    report_json = serializers.URLField(allow_null=True)
    zip = serializers.URLField(allow_null=True)
    labels_nifti = serializers.URLField(
        allow_null=True,
        help_text="labels.nii.gz: the label volume (0 background, 1 GGO, 2 consolidation, 3 other lung) with the "
        "input's shape and affine (a NIfTI volume) or the DICOM series' geometry; null for other inputs.",
    )
    dicom_seg = serializers.URLField(
        allow_null=True,
        help_text="A DICOM SEG (segments GGO and consolidation) referencing every source instance; only for a DICOM "
        "series with a frame of reference, else null.",
    )


class PacsSerializer(serializers.Serializer):
    series = serializers.CharField(help_text="The DICOMweb address of the series analysed.")
    choice = serializers.CharField(
        allow_blank=True, help_text="Which series of the study was analysed, and why."
    )
    send = serializers.BooleanField(help_text="Whether the results are sent back when done.")
    sent = serializers.DateTimeField(
        allow_null=True, help_text="When the SEG and SR were last stored on the PACS."
    )
    error = serializers.CharField(
        allow_blank=True, help_text="Why the last send failed (POST …/send to retry)."
    )


class AnalysisSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Analysis.Status.values)
    kind = serializers.ChoiceField(choices=Analysis.Kind.values)
    created = serializers.DateTimeField()
    finished = serializers.DateTimeField(allow_null=True)
    source_name = serializers.CharField()
    progress = ProgressSerializer()
    error = serializers.CharField(allow_blank=True)
    severity = SeveritySerializer(allow_null=True, help_text="The study's grade from summed areas; null until done.")
    volumes = VolumesSerializer(allow_null=True)
    slices = SliceSerializer(many=True)
    links = AnalysisLinksSerializer()
    pacs = PacsSerializer(allow_null=True, help_text="For a series read from the PACS; null for uploads.")
    disclaimer = serializers.CharField()


class PacsRequestSerializer(serializers.Serializer):
    url = serializers.CharField(
        help_text="The DICOMweb address of a study or series on the configured PACS: "
        "…/studies/UID[/series/UID]."
    )
    send = serializers.BooleanField(
        required=False, default=False, help_text="Store the DICOM SEG and SR back on the PACS when done."
    )


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text=(
            "A slice (PNG, JPEG, DICOM); an archive of slices or of a DICOM series (.zip, .rar, .7z, .tar, "
            ".tar.gz / .tgz, .tar.xz / .txz; folders are fine, never encrypted, split into volumes, nested or "
            "holding links); or a NIfTI volume (.nii, .nii.gz)."
        )
    )


# --- Representation ---------------------------------------------------------------------


def _volumes(areas: dict | None) -> dict | None:
    if not areas:
        return None
    ggo, cons, lung = areas.get("ggo_ml"), areas.get("consolidation_ml"), areas.get("lung_ml")
    return {
        "ggo_ml": ggo,
        "consolidation_ml": cons,
        "lesion_ml": None if ggo is None or cons is None else ggo + cons,
        "lung_ml": lung,
    }


def analysis_data(request, analysis: Analysis) -> dict:
    """The API's JSON object for an analysis (see AnalysisSerializer)."""
    url = request.build_absolute_uri
    done = analysis.status == Analysis.Status.DONE
    kw = {"analysis_id": analysis.id}
    available = exports.exports_available(analysis=analysis)
    slices = []
    if done:
        for s in analysis.slices.all():
            skw = {**kw, "index": s.index}
            slices.append(
                {
                    "index": s.index,
                    "name": s.name,
                    "width": s.width,
                    "height": s.height,
                    "severity": s.severity,
                    "volumes": _volumes(s.areas),
                    "links": {
                        "page": url(reverse("segmenter:slice", kwargs=skw)),
                        "image": url(reverse("segmenter:slice_image", kwargs=skw)),
                        "overlay": url(reverse("segmenter:slice_overlay", kwargs=skw)),
                        "labels": url(reverse("segmenter:slice_labels", kwargs=skw)),
                    },
                }
            )
    return {
        "id": str(analysis.id),
        "status": analysis.status,
        "kind": analysis.kind,
        "created": analysis.created.isoformat(),
        "finished": analysis.finished.isoformat() if analysis.finished else None,
        "source_name": analysis.source_name,
        "progress": {
            "done": analysis.slices_done, "total": analysis.slices_total, "retrying": analysis.retrying
        },
        "error": analysis.error,
        "cautions": exports.analysis_cautions(analysis),
        "severity": analysis.severity if done else None,
        "volumes": _volumes(analysis.areas) if done else None,
        "slices": slices,
        "links": {
            "self": url(reverse("api:analysis", kwargs=kw)),
            "page": url(reverse("segmenter:analysis", kwargs=kw)),
            "report_csv": url(reverse("segmenter:report_csv", kwargs=kw)) if done else None,
            "report_json": url(reverse("segmenter:report_json", kwargs=kw)) if done else None,
            "zip": url(reverse("segmenter:study_zip", kwargs=kw)) if done else None,
            "labels_nifti": url(reverse("segmenter:labels_nifti", kwargs=kw)) if exports.LABELS_NIFTI in available else None,
            "dicom_seg": url(reverse("segmenter:dicom_seg", kwargs=kw)) if exports.DICOM_SEG in available else None,
        },
        "pacs": _pacs(analysis),
        "disclaimer": DISCLAIMER,
    }


def _pacs(analysis: Analysis) -> dict | None:
    source = analysis.pacs_source
    if not source:
        return None
    return {
        "series": f"{source['root']}/studies/{source['study']}/series/{source['series']}",
        "choice": source.get("choice", ""),
        "send": analysis.pacs_send,
        "sent": analysis.pacs_sent.isoformat() if analysis.pacs_sent else None,
        "error": analysis.pacs_error,
    }


def _error(message: str, code: int) -> Response:
    return Response({"error": str(message)}, status=code)


# --- Views ------------------------------------------------------------------------------


class AnalysisListView(APIView):
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(
        operation_id="create_analysis",
        summary="Upload a slice, a study or a volume for analysis, or name a series on the PACS",
        request={"multipart/form-data": UploadSerializer, "application/json": PacsRequestSerializer},
        responses={
            201: OpenApiResponse(AnalysisSerializer, description="Processed (or failed) within the request."),
            202: OpenApiResponse(AnalysisSerializer, description="Queued for a background worker."),
            400: OpenApiResponse(
                ErrorSerializer,
                description=(
                    "The upload is not something we can analyse: an unreadable or unsupported file, a picture "
                    "that is not CT, or an archive that is broken, encrypted, one volume of several, nested, "
                    "over its limits, or holds links or unsafe paths."
                ),
            ),
            413: OpenApiResponse(ErrorSerializer, description="The upload is larger than the limit."),
            415: OpenApiResponse(ErrorSerializer, description="The request is not multipart/form-data."),
            503: OpenApiResponse(ErrorSerializer, description="The file store is unavailable; try again later."),
        },
    )
    def post(self, request):
        try:
            uploads.body_length_check(request.META.get("CONTENT_LENGTH"))
        except uploads.UploadError as exc:
            return _error(str(exc), exc.status_code)
        if request.content_type.startswith("application/json"):
            return self._from_pacs(request)
        upload = request.FILES.get("file")
        if upload is None:
            return _error(
                _("Send the file in a multipart/form-data field named 'file'."), status.HTTP_400_BAD_REQUEST
            )
        try:
            analysis = services.analysis_create(stream=upload, name=upload.name or "upload", size=upload.size)
        except uploads.UploadError as exc:
            return _error(str(exc), exc.status_code)
        return _created(request, analysis)

    def _from_pacs(self, request):
        body = PacsRequestSerializer(data=request.data if isinstance(request.data, dict) else {})
        if not body.is_valid():
            return _error(
                _('Send JSON {"url": "<DICOMweb address of a study or series>", "send": true|false}.'),
                status.HTTP_400_BAD_REQUEST,
            )
        try:
            analysis = services.analysis_create_from_pacs(url=body.validated_data["url"],
                                                          send=body.validated_data["send"])
        except uploads.UploadError as exc:
            return _error(str(exc), exc.status_code)
        return _created(request, analysis)


def _created(request, analysis: Analysis) -> Response:
    code = status.HTTP_201_CREATED if analysis.is_finished else status.HTTP_202_ACCEPTED
    response = Response(analysis_data(request, analysis), status=code)
    response["Location"] = reverse("api:analysis", kwargs={"analysis_id": analysis.id})
    return response


class AnalysisSendView(APIView):
    @extend_schema(
        operation_id="send_analysis",
        summary="Store a done PACS analysis' DICOM SEG and SR on the PACS (again: nothing is stored twice)",
        request=None,
        responses={
            200: AnalysisSerializer,
            400: OpenApiResponse(
                ErrorSerializer, description="Not a done PACS analysis, or the PACS refused."
            ),
            404: OpenApiResponse(ErrorSerializer, description="No such analysis."),
        },
    )
    def post(self, request, analysis_id: uuid.UUID):
        from . import pacs

        try:
            analysis = selectors.analysis_get(analysis_id=analysis_id)
        except Analysis.DoesNotExist:
            return _error(_("No analysis has this id."), status.HTTP_404_NOT_FOUND)
        try:
            pacs.analysis_send(analysis=analysis)
        except uploads.UploadError as exc:
            return _error(str(exc), exc.status_code)
        return Response(analysis_data(request, analysis))


class AnalysisDetailView(APIView):
    @extend_schema(
        operation_id="get_analysis",
        summary="An analysis: its status, progress, study grade and slices",
        responses={200: AnalysisSerializer, 404: OpenApiResponse(ErrorSerializer, description="No such analysis.")},
    )
    def get(self, request, analysis_id: uuid.UUID):
        try:
            analysis = selectors.analysis_get(analysis_id=analysis_id)
        except Analysis.DoesNotExist:
            return _error(_("No analysis has this id."), status.HTTP_404_NOT_FOUND)
        return Response(analysis_data(request, analysis))


def exception_handler(exc, context):
    """DRF's handler, with every error reshaped as {"error": "..."}."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(detail, dict) and "detail" in detail:
        message = str(detail["detail"])
    elif isinstance(detail, dict):
        message = "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in detail.items())
    elif isinstance(detail, list):
        message = " ".join(map(str, detail))
    else:
        message = str(detail)
    response.data = {"error": message}
    return response
