"""The application's URLs plus bare baseline views for `bench/api.py` (bench only).

Each bare view returns the rows the matching API list call returns (same filter, same
clinic, same order, same page) as JSON straight from `.values()`: no authentication, no
permission or throttle, no serializer, no page count. The clinic comes from `?clinic=`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from api.filters import by_local_today
from notifications.models import Escalation, Message
from pumps.models import Pump, PumpStatus, Refill


def _page(request: HttpRequest, qs: QuerySet[Any]) -> JsonResponse:
    size = int(request.GET.get("page_size", 50))
    return JsonResponse({"results": list(qs.values()[:size])}, json_dumps_params={"default": str})


def _clinic(request: HttpRequest) -> int:
    return int(request.GET["clinic"])


def pumps(request: HttpRequest) -> JsonResponse:
    qs = Pump.objects.filter(patient__clinic=_clinic(request))
    if "due_within" in request.GET:
        qs = qs.filter(by_local_today("refill_by", "lte", int(request.GET["due_within"])), status=PumpStatus.ACTIVE)
    return _page(request, qs.order_by("refill_by", "pk"))


def refills(request: HttpRequest) -> JsonResponse:
    qs = Refill.objects.filter(pump__patient__clinic=_clinic(request))
    if "pump" in request.GET:
        qs = qs.filter(pump=int(request.GET["pump"]))
    return _page(request, qs.order_by("-performed_at", "pk"))  # the API appends the id to every ordering


def messages(request: HttpRequest) -> JsonResponse:
    qs = Message.objects.filter(clinic=_clinic(request))
    if "status" in request.GET:
        qs = qs.filter(status__in=request.GET.getlist("status"))
    return _page(request, qs.order_by("-due_at", "-pk"))


def escalations(request: HttpRequest) -> JsonResponse:
    qs = Escalation.objects.filter(Q(clinic=_clinic(request)))
    return _page(request, qs.order_by("-raised_at", "-pk"))


BARE: dict[str, Any] = {"pumps": pumps, "refills": refills, "messages": messages, "escalations": escalations}
MODELS: dict[str, type[Model]] = {"pumps": Pump, "refills": Refill, "messages": Message, "escalations": Escalation}

urlpatterns = [
    *[path(f"bench/bare/{name}/", view) for name, view in BARE.items()],
    path("", include("pumptrack.urls")),
]
