from django.http import JsonResponse
from django.urls import path, re_path
from drf_spectacular.views import SpectacularJSONAPIView

from . import api

app_name = "api"


def not_found(request, *args, **kwargs):
    return JsonResponse({"error": "No such resource in the API."}, status=404)


urlpatterns = [
    path("analyses", api.AnalysisListView.as_view(), name="analyses"),
    path("analyses/<uuid:analysis_id>", api.AnalysisDetailView.as_view(), name="analysis"),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    re_path(r"^[\s\S]*$", not_found),  # malformed ids (any character) and unknown paths answer JSON
]
