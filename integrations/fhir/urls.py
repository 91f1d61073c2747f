"""/fhir/: FHIR R4, read-only (integrations/fhir/views.py)."""

from django.urls import path, re_path

from integrations.fhir import views

app_name = "fhir"
urlpatterns = [
    path("metadata", views.MetadataView.as_view(), name="metadata"),
    path("<str:resource_type>", views.SearchView.as_view(), name="search"),
    path("<str:resource_type>/<str:resource_id>", views.ReadView.as_view(), name="read"),
    re_path(r"^(?P<rest>[\s\S]*)$", views.UnknownView.as_view(), name="unknown"),
]
