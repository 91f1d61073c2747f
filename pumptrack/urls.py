from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import include, path

from notifications.views import healthz


def home(request: HttpRequest) -> HttpResponse:
    return redirect("admin:index")


urlpatterns = [
    path("", home),
    path("admin/", admin.site.urls),
    path("n/", include("notifications.urls")),
    path("healthz", healthz, name="healthz"),
]
