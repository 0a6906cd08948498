"""Error answers for every error the framework or a middleware raises: under the API's
prefix ``{"error": "..."}`` in JSON, the shape the API answers everywhere else
(segmenter/api.py), and Django's HTML pages (templates/400.html, 404.html, 500.html)
elsewhere. Wired as handler400/403/404/500 in _42epochs/urls.py and as CSRF_FAILURE_VIEW.
"""

from __future__ import annotations

from django.http import JsonResponse
from django.views import csrf, defaults

#: Requests whose path starts with this are answered in JSON (the API lives at /api/v1/).
API_PATH_PREFIX = "/api/"


def is_api_request(request) -> bool:
    return request.path_info.startswith(API_PATH_PREFIX)


def json_error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def bad_request(request, exception):
    if is_api_request(request):
        return json_error("The request could not be understood.", 400)
    return defaults.bad_request(request, exception)


def permission_denied(request, exception):
    if is_api_request(request):
        return json_error("This request is not allowed.", 403)
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception):
    if is_api_request(request):
        return json_error("No such resource in the API.", 404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if is_api_request(request):
        return json_error("The server failed to answer this request; please try again.", 500)
    return defaults.server_error(request)


def csrf_failure(request, reason: str = ""):
    if is_api_request(request):
        return json_error(f"The CSRF check failed: {reason}", 403)
    return csrf.csrf_failure(request, reason)
