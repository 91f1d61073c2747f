from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import include, path, reverse
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from notifications.views import healthz
from patients.access import is_member


def home(request: HttpRequest) -> HttpResponse:
    """Clinic staff start on their worklist; anyone else at the admin login (then the worklist)."""
    if is_member(request.user):
        return redirect("workspace:worklist")
    return redirect_to_login(reverse("workspace:worklist"), reverse("admin:login"))


urlpatterns = [
    path("", home),
    path("admin/", admin.site.urls),
    path("n/", include("notifications.urls")),
    path("healthz", healthz, name="healthz"),
    path("api/v1/", include("api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", template_name="api/swagger_ui.html"), name="api-docs"),
    path("fhir/", include("integrations.fhir.urls")),
    path("feeds/", include("integrations.urls")),
    path("work/", include("workspace.urls")),
    path("account/2fa/", include("twofactor.urls")),
]
