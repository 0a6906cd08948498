from django.urls import include, path

urlpatterns = [
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/v1/", include("segmenter.api_urls")),
    path("", include("segmenter.urls")),
]

# JSON under /api/, the HTML pages elsewhere (segmenter/errors.py).
handler400 = "segmenter.errors.bad_request"
handler403 = "segmenter.errors.permission_denied"
handler404 = "segmenter.errors.page_not_found"
handler500 = "segmenter.errors.server_error"
