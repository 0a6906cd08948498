from django.urls import path

app_name = "segmenter"
urlpatterns: list = []
