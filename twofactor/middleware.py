"""The gate between a password-only session and everything else.

The admin's login form signs a user in with the password; for a user with an authenticator
app that session is only half way: until a code is given, every request is turned back to
the code page (a JSON 403 under /api/ and /fhir/), whatever view it was meant for. Default
deny, so a page added later cannot forget the check. With PUMPTRACK_REQUIRE_2FA, a staff user
without a device is likewise held at the enrolment page.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse

from twofactor import services


class Gate(models.TextChoices):
    OPEN = "open", "open"
    VERIFY = "verify", "a code is needed"
    ENROL = "enrol", "enrolment is needed"


def gate_for(*, authenticated: bool, staff: bool, verified: bool, has_device: bool, required: bool) -> Gate:
    """What a session may do: a pure rule, the middleware gathers its inputs."""
    if not authenticated or verified:
        return Gate.OPEN
    if has_device:
        return Gate.VERIFY
    if required and staff:
        return Gate.ENROL
    return Gate.OPEN


# Paths a held session may still use besides the gate's own page: leaving, and liveness.
_ALWAYS = ("/admin/logout/", "/healthz")
_API_PREFIXES = ("/api/", "/fhir/")
_API_MESSAGES = {
    Gate.VERIFY: "This session still needs a two-factor code: enter it at {page}.",
    Gate.ENROL: "Two-factor authentication is required: set up an authenticator app at {page}.",
}


class TwoFactorGateMiddleware:
    """After django_otp.middleware.OTPMiddleware (it sets `user.is_verified()`)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if not user.is_authenticated:
            return self.get_response(request)
        gate = gate_for(
            authenticated=True,
            staff=user.is_staff,
            verified=services.is_verified(user),
            has_device=services.has_device(user),
            required=settings.PUMPTRACK_REQUIRE_2FA,
        )
        if gate == Gate.OPEN:
            return self.get_response(request)
        page = reverse("twofactor:verify" if gate == Gate.VERIFY else "twofactor:enrol")
        path = request.path
        if path == page or path.startswith(_ALWAYS) or path.startswith(settings.STATIC_URL):
            return self.get_response(request)
        if path.startswith(_API_PREFIXES):
            return JsonResponse({"detail": _API_MESSAGES[gate].format(page=page)}, status=403)
        return HttpResponseRedirect(f"{page}?{urlencode({'next': request.get_full_path()})}")
