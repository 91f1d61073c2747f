"""The second-factor pages: the code step after the password, enrolment, backup codes, removal.

They look like the admin (its base template and context). Who may reach them is decided by
twofactor.middleware: a password-only session reaches only the code page (or enrolment when
two-factor is required), so the management pages always run in a verified session.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import django_otp
import segno
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_lockout_response
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import logout
from django.contrib.auth.signals import user_login_failed
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from twofactor import services

View = Callable[..., HttpResponse]


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=32,
        help_text="The six digits your authenticator app shows now, or one of your backup codes.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True, "size": 12}),
    )


def staff_only(view: View) -> View:
    """Signed-in staff only (anyone else goes to the admin login); never cached, codes are secrets."""

    @wraps(view)
    @never_cache
    @sensitive_post_parameters("code")
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if not (user.is_authenticated and user.is_active and user.is_staff):
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        return view(request, *args, **kwargs)

    return wrapped


def _next(request: HttpRequest) -> str:
    """Where to go afterwards: the page the login was for, if it is on this site."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return "/"


def _page(request: HttpRequest, template: str, context: dict[str, Any], *, held: bool = False) -> HttpResponse:
    base = admin.site.each_context(request)
    if held:
        # A session still held at the gate: no admin navigation, its links would only bounce.
        base.update(has_permission=False, is_nav_sidebar_enabled=False)
    return render(request, f"twofactor/{template}", {**base, "next": _next(request), **context})


def _credentials(request: HttpRequest) -> dict[str, str]:
    return {"username": request.user.get_username()}


def _locked_out(request: HttpRequest) -> HttpResponse | None:
    """django-axes' lockout answer (429) when this user name is locked out from this address,
    ending the half-open session; None otherwise."""
    credentials = _credentials(request)
    if AxesProxyHandler.is_allowed(request, credentials):
        return None
    logout(request)
    response: HttpResponse = get_lockout_response(request, None, credentials)
    return response


def _failed(request: HttpRequest) -> HttpResponse | None:
    """A wrong code counts as a failed login for django-axes, like a wrong password; the
    lockout answer when this failure reached the limit."""
    user_login_failed.send(sender=__name__, credentials=_credentials(request), request=request)
    return _locked_out(request)


@staff_only
@require_http_methods(["GET", "POST"])
def verify(request: HttpRequest) -> HttpResponse:
    """The second step of the login: a code from the app or a backup code."""
    user = request.user
    if services.is_verified(user) or not services.has_device(user):
        return HttpResponseRedirect(_next(request))
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if locked := _locked_out(request):
            return locked
        device = services.verify(user, form.cleaned_data["code"])
        if device is not None:
            request.session.cycle_key()  # a new privilege level gets a new session id
            django_otp.login(request, device)
            return HttpResponseRedirect(_next(request))
        if locked := _failed(request):
            return locked
        form.add_error("code", "That code is not right (or was already used). Try the code your app shows now.")
    return _page(request, "verify.html", {"title": "Two-factor authentication", "form": form}, held=True)


@staff_only
@require_http_methods(["GET", "POST"])
def enrol(request: HttpRequest) -> HttpResponse:
    """Scan the QR code (or type the key), then confirm with the first code the app shows."""
    user = request.user
    device = services.start_enrolment(user)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        confirmed = services.confirm_enrolment(user, form.cleaned_data["code"])
        if confirmed is not None:
            request.session.cycle_key()
            django_otp.login(request, confirmed[0])
            messages.success(request, "Two-factor authentication is on. Keep your backup codes somewhere safe.")
            return redirect(f"{reverse('twofactor:backup_codes')}?next={_next(request)}")
        form.add_error("code", "That code does not match: check the app's clock, scan again, and enter the newest code.")
    held = settings.PUMPTRACK_REQUIRE_2FA and not services.is_verified(user)  # enrolling at the gate
    secret = services.b32_secret(device)
    context = {
        "title": "Set up two-factor authentication",
        "form": form,
        "qr_data_uri": segno.make(device.config_url, error="m").svg_data_uri(scale=5),
        "secret": " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
        "replacing": services.has_device(user),
        "required": settings.PUMPTRACK_REQUIRE_2FA,
    }
    return _page(request, "enrol.html", context, held=held)


@staff_only
def overview(request: HttpRequest) -> HttpResponse:
    user = request.user
    context = {
        "title": "Two-factor authentication",
        "enrolled": services.has_device(user),
        "codes_left": len(services.backup_codes(user)),
        "required": settings.PUMPTRACK_REQUIRE_2FA,
    }
    return _page(request, "overview.html", context)


@staff_only
@require_http_methods(["GET", "POST"])
def backup_codes(request: HttpRequest) -> HttpResponse:
    """See the unused backup codes; POST makes a new set (the old ones stop working)."""
    user = request.user
    if not services.has_device(user):
        return redirect("twofactor:overview")
    if request.method == "POST":
        services.new_backup_codes(user)
        messages.success(request, "New backup codes: the old ones no longer work.")
        return redirect(f"{reverse('twofactor:backup_codes')}?next={_next(request)}")
    return _page(request, "backup_codes.html", {"title": "Backup codes", "codes": services.backup_codes(user)})


@staff_only
@require_http_methods(["GET", "POST"])
def remove(request: HttpRequest) -> HttpResponse:
    """Turn two-factor off: needs a fresh code, so a session left open cannot do it."""
    user = request.user
    if not services.has_device(user):
        return redirect("twofactor:overview")
    if settings.PUMPTRACK_REQUIRE_2FA:
        messages.error(request, "This site requires two-factor authentication: move it to a new phone instead.")
        return redirect("twofactor:overview")
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if locked := _locked_out(request):
            return locked
        if services.verify(user, form.cleaned_data["code"]) is not None:
            services.remove_devices(user)
            messages.success(request, "Two-factor authentication is off for your account.")
            return redirect("twofactor:overview")
        if locked := _failed(request):
            return locked
        form.add_error("code", "That code is not right (or was already used).")
    return _page(request, "remove.html", {"title": "Turn off two-factor authentication", "form": form})
