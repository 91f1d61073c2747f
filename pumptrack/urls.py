from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from notifications.views import healthz


def home(request: HttpRequest) -> HttpResponse:
    return redirect("admin:index")


urlpatterns = [
    path("", home),
    path("admin/", admin.site.urls),
    path("n/", include("notifications.urls")),
    path("healthz", healthz, name="healthz"),
    path("api/v1/", include("api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("fhir/", include("integrations.fhir.urls")),
    path("feeds/", include("integrations.urls")),
    path("work/", include("workspace.urls")),
]
