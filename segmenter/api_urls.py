from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularJSONAPIView

from . import api, errors

app_name = "api"


@csrf_exempt  # like the API's views: a POST to an unknown path is a 404, not a CSRF failure
def not_found(request, *args, **kwargs):
    return errors.json_error("No such resource in the API.", 404)


urlpatterns = [
    path("analyses", api.AnalysisListView.as_view(), name="analyses"),
    path("analyses/<uuid:analysis_id>", api.AnalysisDetailView.as_view(), name="analysis"),
    path("analyses/<uuid:analysis_id>/send", api.AnalysisSendView.as_view(), name="analysis_send"),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    re_path(r"^[\s\S]*$", not_found),  # malformed ids (any character) and unknown paths answer JSON
]
