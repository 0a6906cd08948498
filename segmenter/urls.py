"""Pages and downloads of the web front end. Analyses are addressed by UUID; the JSON API
lives apart, under /api/v1/."""

from django.urls import path

from . import pacs_views, views

app_name = "segmenter"

_slice = "a/<uuid:analysis_id>/slices/<int:index>/"

urlpatterns = [
    path("", views.home, name="home"),
    path("a/<uuid:analysis_id>/", views.analysis, name="analysis"),
    path("a/<uuid:analysis_id>/delete", views.analysis_delete, name="delete"),
    path("a/<uuid:analysis_id>/status.json", views.analysis_status, name="status"),
    path("a/<uuid:analysis_id>/report.csv", views.report_csv_download, name="report_csv"),
    path("a/<uuid:analysis_id>/report.json", views.report_json_download, name="report_json"),
    path("a/<uuid:analysis_id>/study.zip", views.study_zip, name="study_zip"),
    path("a/<uuid:analysis_id>/labels.nii.gz", views.labels_nifti_download, name="labels_nifti"),
    path("a/<uuid:analysis_id>/seg.dcm", views.dicom_seg_download, name="dicom_seg"),
    path("a/<uuid:analysis_id>/send", pacs_views.send, name="pacs_send"),
    path("pacs/", pacs_views.search, name="pacs_search"),
    path("pacs/studies/<str:study_uid>/", pacs_views.study, name="pacs_study"),
    path("pacs/analyse", pacs_views.analyse, name="pacs_analyse"),
    path(_slice, views.slice_detail, name="slice"),
    path(_slice + "image.png", views.slice_image, name="slice_image"),
    path(_slice + "labels.png", views.slice_labels, name="slice_labels"),
    path(_slice + "hu.png", views.slice_hu, name="slice_hu"),
    path(_slice + "overlay.png", views.slice_overlay, name="slice_overlay"),
    path(_slice + "thumbnail.png", views.slice_thumbnail, name="slice_thumbnail"),
]
