from django.urls import include, path

urlpatterns = [
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/v1/", include("segmenter.api_urls")),
    path("", include("segmenter.urls")),
]
