"""Show and read times in the staff member's clinic time zone.

Stored datetimes are UTC; a nurse types and reads local clinic time. A member of several
clinics in different zones sees the zone of the first, by name (and each form says so).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from patients.models import Clinic


class ClinicTimezoneMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        zone = None
        if user is not None and user.is_authenticated:
            zone = Clinic.objects.filter(memberships__user=user).order_by("name").values_list("time_zone", flat=True).first()
        if zone:
            timezone.activate(zoneinfo.ZoneInfo(zone))
        else:
            timezone.deactivate()
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
