"""Refill appointments in the admin (issue 5): book from the pump page, cancel, reschedule,
and a week view of booked visits and unbooked refill-by dates. Thin: the rules and the
writes are in `pumps.appointments`.

URL names other pages link to:
- `admin:pumps_appointment_add` with `?pump=<id>`: book the pump's next visit;
- `admin:pumps_appointment_week` with `?start=YYYY-MM-DD`: the week view;
- `admin:pumps_appointment_cancel` (POST) with the appointment's id.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from patients.access import clinics_for, clinics_writable, may_write
from patients.audit_admin import AuditedAdminMixin
from patients.models import Clinic
from patients.scoped_admin import apply_errors
from pumps import appointments, domain
from pumps.admin import CSS, StampedForm, StampedFormAdmin
from pumps.models import Appointment, AppointmentStatus, Pump, PumpStatus

LABEL = "pumps.appointment"


class AppointmentForm(StampedForm):
    """Typed on the wall clock of the pump's clinic (StampedForm), checked by the service's rules."""

    acknowledged_late = forms.BooleanField(
        required=False,
        label="Book after the refill-by date",
        help_text="Only when the visit cannot be earlier; say why below.",
    )

    class Meta:
        model = Appointment
        fields = ["pump", "starts_at", "location", "notes", "acknowledged_late", "reason"]
        widgets = {"reason": forms.Textarea(attrs={"rows": 2}), "notes": forms.Textarea(attrs={"rows": 2})}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        pump, starts_at = cleaned.get("pump"), cleaned.get("starts_at")
        if self.instance.pk is not None:
            pump = self.instance.pump
        if pump is None or starts_at is None or self.errors:
            return cleaned
        if self.instance.pk is not None and "starts_at" not in self.changed_data:
            return cleaned  # only the place or notes change: no booking rule applies
        try:
            appointments.validate_booking(
                pump,
                starts_at,
                now=self.now,
                acknowledged_late=bool(cleaned.get("acknowledged_late")),
                reason=cleaned.get("reason") or "",
                replacing=self.instance if self.instance.pk is not None else None,
            )
        except ValidationError as exc:
            apply_errors(self, exc)
        return cleaned

    def record(self) -> Appointment:
        c = self.cleaned_data
        late, reason = bool(c.get("acknowledged_late")), str(c.get("reason") or "")
        if self.instance.pk is None:
            return appointments.book_appointment(
                c["pump"],
                c["starts_at"],
                c.get("location") or "",
                c.get("notes") or "",
                self.request.user,
                self.now,
                acknowledged_late=late,
                reason=reason,
            )
        if "starts_at" in self.changed_data:
            return appointments.reschedule(
                self.instance,
                c["starts_at"],
                by=self.request.user,
                now=self.now,
                location=c.get("location") or "",
                notes=c.get("notes") or "",
                acknowledged_late=late,
                reason=reason,
            )
        return appointments.update_details(
            self.instance, location=c.get("location") or "", notes=c.get("notes") or "", now=self.now
        )


@admin.register(Appointment)
class AppointmentAdmin(AuditedAdminMixin, StampedFormAdmin):
    form = AppointmentForm
    clinic_lookup = "pump__patient__clinic"
    change_form_template = "admin/pumps/appointment/change_form.html"
    list_display = ["starts_at", "patient", "pump", "location", "status", "after_refill_by"]
    list_filter = ["status", "after_refill_by", ("pump__patient__clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["pump__patient", "pump__model"]
    search_fields = ["pump__serial_number", "pump__patient__mrn", "pump__patient__family_name"]
    date_hierarchy = "starts_at"
    actions = ["cancel_selected"]
    readonly_fields = ["status", "after_refill_by", "booked_by", "created_at", "refill", "closed_at", "cancellation_reason"]

    class Media:
        css = CSS

    @admin.display(description="patient", ordering="pump__patient__family_name")
    def patient(self, obj: Appointment) -> str:
        return str(obj.pump.patient)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Appointment]:
        return super().get_queryset(request).select_related("pump__patient__clinic", "pump__model", "booked_by")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return AppointmentForm.Meta.fields
        if obj.status != AppointmentStatus.BOOKED:
            return [name for name in AppointmentForm.Meta.fields if name != "acknowledged_late"] + self.readonly_fields
        return [*AppointmentForm.Meta.fields, *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return []
        if obj.status != AppointmentStatus.BOOKED:
            return self.get_fields(request, obj)  # history: read only
        return ["pump", *self.readonly_fields]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.status != AppointmentStatus.BOOKED:
            return False  # done, missed and cancelled visits are history
        return super().has_change_permission(request, obj)

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        return form.record()

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        pass  # the service wrote it

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        pump = self._pump_from(request)
        if pump is not None:
            initial["pump"] = str(pump.pk)
        else:
            initial.pop("pump", None)  # not one this user may book for
        return initial

    def _pump_from(self, request: HttpRequest) -> Pump | None:
        """The `?pump=` pump, if the user may book for it (otherwise as if none was given)."""
        pump_id = request.GET.get("pump", "")
        if not pump_id.isdigit():
            return None
        pumps = Pump.objects.filter(patient__clinic__in=clinics_writable(request.user, LABEL))
        return pumps.select_related("patient__clinic").filter(pk=pump_id).first()

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        form = context["adminform"].form
        obj = kwargs.get("obj")
        pump = obj.pump if obj is not None else (form.cleaned_data.get("pump") if hasattr(form, "cleaned_data") else None)
        pump = pump or self._pump_from(request)
        if pump is not None:
            clinic = pump.patient.clinic
            context["booking_pump"] = pump
            context["clinic_time_zone"] = clinic.time_zone
            context["refill_by"] = pump.refill_by
            context["today"] = domain.local_date(timezone.now(), clinic.tz)
        else:
            context["clinic_time_zone"] = "the pump's clinic time zone"
        if obj is not None and obj.status == AppointmentStatus.BOOKED:
            context["may_cancel"] = may_write(request.user, LABEL, obj.pump.patient.clinic)
        return super().render_change_form(request, context, *args, **kwargs)

    # -- cancel -------------------------------------------------------------------------

    @admin.action(description="Cancel the selected booked visits")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Appointment]) -> None:
        done = 0
        for appointment in queryset.filter(status=AppointmentStatus.BOOKED):
            if not may_write(request.user, LABEL, appointment.pump.patient.clinic):
                continue
            try:
                appointments.cancel_appointment(appointment, by=request.user, now=timezone.now(), reason="Cancelled in the list")
            except ValidationError:
                continue  # closed meanwhile (a refill recorded): nothing to cancel
            done += 1
        self.message_user(request, f"{done} booked visit(s) cancelled.")

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        if not may_write(request.user, LABEL):
            actions.pop("cancel_selected", None)
        return actions

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("week/", wrap(self.week_view), name="pumps_appointment_week"),
            path("<int:pk>/cancel/", wrap(self.cancel_view), name="pumps_appointment_cancel"),
            *super().get_urls(),
        ]

    def cancel_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        appointment = get_object_or_404(self.get_queryset(request), pk=pk)  # another clinic's: 404
        change_url = reverse("admin:pumps_appointment_change", args=[appointment.pk])
        if request.method != "POST" or not may_write(request.user, LABEL, appointment.pump.patient.clinic):
            self.message_user(request, "You may not cancel this visit.", messages.ERROR)
            return HttpResponseRedirect(change_url)
        try:
            appointments.cancel_appointment(
                appointment, by=request.user, now=timezone.now(), reason=request.POST.get("cancellation_reason", "")
            )
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            self.message_user(request, f"{appointment} cancelled.")
        return HttpResponseRedirect(change_url)

    # -- week view ----------------------------------------------------------------------

    def week_view(self, request: HttpRequest) -> HttpResponse:
        clinics = list(clinics_for(request.user))
        now = timezone.now()
        start = week_start(request.GET.get("start", ""), clinics, now)
        today = domain.local_date(now, clinics[0].tz) if clinics else now.astimezone(UTC).date()
        week = build_week(clinics, start, today)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Refill visits, week of {start:%d %B %Y}",
            "days": week,
            "start": start,
            "prev_start": start - timedelta(days=7),
            "next_start": start + timedelta(days=7),
            # Book links only where this user may book (a viewer elsewhere sees the day, no link).
            "writable": set(clinics_writable(request.user, LABEL).values_list("pk", flat=True)),
        }
        return TemplateResponse(request, "admin/pumps/appointment/week.html", context)


def week_start(raw: str, clinics: list[Clinic], now: datetime) -> date:
    """The Monday of the week asked for, or of this week on the (first) clinic's calendar."""
    today = domain.local_date(now, clinics[0].tz) if clinics else now.astimezone(UTC).date()
    try:
        on = date.fromisoformat(raw)
    except ValueError:
        on = today
    if abs((on - today).days) > 3660:  # a typo, or the calendar's ends (no date arithmetic past them)
        on = today
    return on - timedelta(days=on.weekday())


def build_week(clinics: list[Clinic], start: date, today: date | None = None) -> list[dict[str, Any]]:
    """Per clinic-local day of the week: the visits (booked or closed) and the active pumps
    whose refill-by falls that day with no visit booked. Two queries whatever the size.

    In the week that holds `today`, pumps already overdue with no visit booked are listed on
    today: the most urgent to book would otherwise appear on no current or future week.
    """
    days = [start + timedelta(days=n) for n in range(7)]
    end = days[-1] + timedelta(days=1)
    # Every zone's week lies within a day of the UTC one; each visit is placed by its own clinic's date.
    lo = datetime.combine(start - timedelta(days=1), time(0), tzinfo=UTC)
    hi = datetime.combine(end + timedelta(days=1), time(0), tzinfo=UTC)
    visits = (
        Appointment.objects.filter(pump__patient__clinic__in=clinics, starts_at__gte=lo, starts_at__lt=hi)
        .exclude(status=AppointmentStatus.CANCELLED)
        .select_related("pump__patient__clinic", "pump__model")
        .order_by("starts_at", "pk")
    )
    booked = Appointment.objects.filter(pump=OuterRef("pk"), status=AppointmentStatus.BOOKED)
    this_week = today is not None and start <= today < start + timedelta(days=7)
    since = date.min if this_week else start
    unbooked = (
        Pump.objects.filter(patient__clinic__in=clinics, status=PumpStatus.ACTIVE, refill_by__gte=since, refill_by__lt=end)
        .exclude(Exists(booked))
        .select_related("patient__clinic", "model")
        .order_by("refill_by", "patient__family_name", "pk")
    )
    by_day: dict[date, list[Appointment]] = defaultdict(list)
    for visit in visits:
        tz = visit.pump.patient.clinic.tz
        visit.local_start = visit.starts_at.astimezone(tz)  # type: ignore[attr-defined]
        by_day[visit.local_start.date()].append(visit)  # type: ignore[attr-defined]
    due: dict[date, list[Pump]] = defaultdict(list)
    for pump in unbooked:
        assert pump.refill_by is not None
        pump.overdue = today is not None and pump.refill_by < today  # type: ignore[attr-defined]
        due[today if pump.overdue else pump.refill_by].append(pump)  # type: ignore[attr-defined,index]
    return [{"day": d, "visits": by_day.get(d, []), "unbooked": due.get(d, [])} for d in days]
