"""The staff workspace pages: the worklist, its CSV export and the outreach log form.

Thin: scoping and permissions here, everything else in `workspace.services`. Members of a
clinic only (patients.access.is_member); anyone else is sent to the admin login.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods

from notifications.context_processors import sweep_alerts
from patients.access import clinics_for, is_member, may_write
from patients.models import Clinic
from patients.scoped_admin import apply_errors
from pumps.models import Pump
from workspace import services
from workspace.models import OutreachAttempt, OutreachOutcome

View = Callable[..., HttpResponse]


def member_required(view: View) -> View:
    """Clinic staff only: anyone else (anonymous, non-staff, staff of no clinic) goes to
    the admin login, which returns here afterwards."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_member(request.user):
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        return view(request, *args, **kwargs)

    return wrapped


def admin_chrome(request: HttpRequest) -> dict[str, Any]:
    """The admin's page furniture (header, user links) without its app list: that list
    asks every model admin for permissions, about sixty queries the worklist does not need."""
    site = admin.site
    return {
        "site_title": site.site_title,
        "site_header": site.site_header,
        "site_url": site.site_url,
        "has_permission": True,  # only members reach these pages
        "available_apps": [],
        "is_popup": False,
        "is_nav_sidebar_enabled": False,
    }


def _selection(request: HttpRequest) -> tuple[list[Clinic], Clinic | None]:
    """The user's clinics and the one chosen with ?clinic= (None: all). Another clinic's
    id, or anything that is not an id, answers 404 like any object out of scope."""
    clinics = list(clinics_for(request.user).order_by("name"))
    raw = request.GET.get("clinic", "")
    if not raw:
        return clinics, None
    chosen = next((c for c in clinics if str(c.pk) == raw), None)
    if chosen is None:
        raise Http404("No such clinic.")
    return clinics, chosen


@require_GET
@member_required
def worklist(request: HttpRequest) -> HttpResponse:
    clinics, chosen = _selection(request)
    now = timezone.now()
    lists = services.worklist(request.user, [chosen.pk] if chosen else None, now)
    context = {
        **admin_chrome(request),
        "title": "Worklist",
        "clinics": clinics,
        "chosen": chosen,
        "worklists": lists,
        "groups": list(services.Group),
        "due_within_days": services.DUE_WITHIN_DAYS,
        # The admin's banner is for admin pages; the home page needs it most.
        "sweep_alerts": sweep_alerts(now),
        "csv_query": f"?clinic={chosen.pk}" if chosen else "",
        "here": request.get_full_path(),
    }
    return render(request, "workspace/worklist.html", context)


@require_GET
@member_required
def worklist_csv(request: HttpRequest) -> HttpResponse:
    _, chosen = _selection(request)
    now = timezone.now()
    lists = services.worklist(request.user, [chosen.pk] if chosen else None, now)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    stamp = timezone.localtime(now).strftime("%Y-%m-%d")
    response["Content-Disposition"] = f'attachment; filename="worklist-{stamp}.csv"'
    # Patient details: not to be kept by browser or proxy caches.
    response["Cache-Control"] = "no-store"
    csv.writer(response).writerows(services.csv_rows(lists))
    return response


class OutreachForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = OutreachAttempt
        fields = ["at", "channel", "outcome", "note"]
        widgets = {
            "at": forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
            "outcome": forms.RadioSelect,
            "note": forms.Textarea(attrs={"rows": 3, "cols": 60}),
        }
        help_texts = {"at": "Clinic time.", "note": "What was said or agreed, e.g. the visit date the patient asked for."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No preselected blank: the outcome is a required choice.
        self.fields["outcome"].choices = OutreachOutcome.choices


def _back(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return reverse("workspace:worklist")


@require_http_methods(["GET", "POST"])
@member_required
def log_outreach(request: HttpRequest, pump_id: int) -> HttpResponse:
    pump = get_object_or_404(
        Pump.objects.select_related("patient__clinic", "model"), pk=pump_id, patient__clinic__in=clinics_for(request.user)
    )
    clinic = pump.patient.clinic
    if not may_write(request.user, "workspace.outreachattempt", clinic):
        raise PermissionDenied("Viewers cannot log outreach attempts.")
    now = timezone.now()
    # Typed and shown on the clinic's wall clock, whatever the user's first clinic is.
    with timezone.override(clinic.tz):
        if request.method == "POST":
            form = OutreachForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                try:
                    services.log_outreach(
                        pump,
                        at=data["at"],
                        channel=data["channel"],
                        outcome=data["outcome"],
                        note=data["note"],
                        by=request.user,
                        now=now,
                    )
                except ValidationError as exc:
                    apply_errors(form, exc)
                else:
                    messages.success(request, f"Outreach to {pump.patient.full_name} logged.")
                    return HttpResponseRedirect(_back(request))
        else:
            form = OutreachForm(initial={"at": timezone.localtime(now).replace(second=0, microsecond=0, tzinfo=None)})
        context = {
            **admin_chrome(request),
            "title": f"Log an outreach attempt: {pump.patient.full_name}",
            "pump": pump,
            "patient": pump.patient,
            "clinic": clinic,
            "form": form,
            "recent": pump.outreach_attempts.select_related("by")[:10],
            "next": _back(request),
        }
        return render(request, "workspace/outreach_form.html", context)
