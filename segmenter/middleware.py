"""Middleware: the API's Origin check and the response headers Django 5.2 does not set.

``ApiOriginMiddleware`` refuses a browser's request to the API made from another site's
page (its ``Origin`` header names a site other than this one and is not in
CSRF_TRUSTED_ORIGINS), before the body is read; scripts send no ``Origin`` and are not
affected. ``SecurityHeadersMiddleware`` adds Content-Security-Policy (from SECURE_CSP, in
Django 6's format, so that its built-in middleware can take over) and Permissions-Policy
(from PERMISSIONS_POLICY).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest

from .errors import is_api_request, json_error

#: Methods that change something; reads from another site's page get no answer they can
#: read anyway (the API sends no CORS headers).
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def origin_allowed(request: HttpRequest, origin: str) -> bool:
    """Whether ``origin`` is this site (scheme and host of the request) or a trusted origin.

    Trusted origins are CSRF_TRUSTED_ORIGINS, as Django's CSRF check reads them:
    ``https://ct.example.org``, or ``https://*.example.org`` for every subdomain.
    """
    if origin == f"{request.scheme}://{request.get_host()}":
        return True
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    parts = urlsplit(origin)
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        if "*" not in trusted:
            continue
        pattern = urlsplit(trusted)
        suffix = pattern.netloc.removeprefix("*")  # ".example.org"
        if parts.scheme == pattern.scheme and parts.netloc.endswith(suffix) and len(parts.netloc) > len(suffix):
            return True
    return False


class ApiOriginMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        origin = request.headers.get("Origin")
        if origin is not None and request.method in UNSAFE_METHODS and is_api_request(request):
            if not origin_allowed(request, origin):
                return json_error(
                    f"Requests from pages of {origin} are refused: the API answers this site's pages and "
                    "scripts (which send no Origin header) only.",
                    403,
                )
        return self.get_response(request)


def header_value(directives: dict[str, list[str] | str | bool]) -> str:
    """``{"default-src": ["'self'"], "upgrade-insecure-requests": True}`` as a header's
    value: ``default-src 'self'; upgrade-insecure-requests``."""
    parts = []
    for name, sources in directives.items():
        if sources is True:
            parts.append(name)
        elif sources:
            parts.append(f"{name} {sources if isinstance(sources, str) else ' '.join(sources)}")
    return "; ".join(parts)


class SecurityHeadersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        headers = {
            "Content-Security-Policy": header_value(settings.SECURE_CSP),
            "Permissions-Policy": ", ".join(
                f"{feature}=({' '.join(allowed)})" for feature, allowed in settings.PERMISSIONS_POLICY.items()
            ),
        }
        for name, value in headers.items():
            if value:
                response.headers.setdefault(name, value)
        return response
