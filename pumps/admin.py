"""The clinic's admin for pumps. Thin: forms shape input, services decide and write.

Recording a refill or a dose change is a two-step form: the first submit shows the computed
result beside the current values; saving needs a second submit of the same input, and any
warning the change trips must be ticked and given a reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from patients.access import clinics_for, clinics_writable, may_set_phase, may_write
from patients.audit_admin import AuditedAdminMixin
from patients.models import Clinic
from patients.scoped_admin import ClinicScopedAdmin, ScopedInline, apply_errors
from pumps import charts, documents, domain, services
from pumps.models import (
    Catheter,
    CatheterRevision,
    ClinicalEvent,
    Phase,
    Program,
    Pump,
    PumpModel,
    PumpStatus,
    Refill,
    ScreeningTrial,
)

CSS = {"all": ["pumps/admin.css"]}
CONFIRM = "Check the computed result below, then press Save again to record it."


def in_zone(value: datetime, zone: Any) -> datetime:
    """The wall-clock time typed by staff, read in `zone` instead of the active zone."""
    return timezone.make_aware(timezone.make_naive(value, timezone.get_current_timezone()), zone)


class StampedForm(forms.ModelForm):
    """A form that knows the request (set by the admin) and reads the clock once.

    Typed times mean the wall clock of the record's clinic (found through `clinic_field`),
    even for staff of several clinics in different zones.
    """

    request: ClassVar[HttpRequest]
    clinic_field = "pump"  # "pump" or "patient"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.now = timezone.now()

    def record_clinic(self) -> Clinic | None:
        owner = (getattr(self, "cleaned_data", None) or {}).get(self.clinic_field)
        if owner is None and self.instance.pk is not None:
            owner = getattr(self.instance, self.clinic_field, None)
        if isinstance(owner, Pump):
            return owner.patient.clinic
        return getattr(owner, "clinic", None)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        clinic = self.record_clinic()
        if clinic is not None:
            for name in self.changed_data:
                if isinstance(cleaned.get(name), datetime):
                    cleaned[name] = in_zone(cleaned[name], clinic.tz)
        return cleaned


class StampedFormAdmin(ClinicScopedAdmin):
    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"request": request})


class ServiceAddAdmin(StampedFormAdmin):
    """Adds go through a service (`form.record()`); saved records are read-only."""

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        return form.record()

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Append-only history: a saved refill or program is corrected by a new record.
        return obj is None and super().has_change_permission(request, obj)


# ----------------------------------------------------------------------------- preview forms


class PreviewForm(StampedForm):
    """Shows the computed result first; saves only when the same input is submitted again."""

    acknowledged_warnings = forms.MultipleChoiceField(
        choices=[(r.value, r.value) for r in domain.Rule],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Acknowledge warnings",
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        label="Reason for acknowledging",
        help_text="Only needed when the computed result lists warnings.",
    )
    preview_token = forms.CharField(widget=forms.HiddenInput, required=False)

    preview: Any = None

    # The service pair behind the form: a preview that writes nothing, and the write.
    previewer: Callable[..., Any]
    recorder: Callable[..., Any]

    def build_input(self) -> Any:
        raise NotImplementedError

    def compute_preview(self, pump: Pump, inp: Any) -> Any:
        return type(self).previewer(pump, inp, self.now)

    def record(self) -> Any:
        c = self.cleaned_data
        return type(self).recorder(
            c["pump"],
            self.build_input(),
            by=self.request.user,
            now=self.now,
            acknowledged=c.get("acknowledged_warnings") or [],
            reason=c.get("reason", ""),
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        pump = cleaned.get("pump")
        if pump is None or self.errors:
            return cleaned
        try:
            inp = self.build_input()
            self.preview = self.compute_preview(pump, inp)
        except ValidationError as exc:
            apply_errors(self, exc)
            return cleaned
        tripped = {w.code.value for w in self.preview.warnings}
        missing = tripped - set(cleaned.get("acknowledged_warnings") or [])
        if missing:
            self.add_error("acknowledged_warnings", f"Tick to acknowledge: {', '.join(sorted(missing))}.")
        elif tripped and not (cleaned.get("reason") or "").strip():
            self.add_error("reason", "Give a reason for acknowledging the warnings.")
        token = hashlib.sha256(f"{pump.pk}|{inp!r}".encode()).hexdigest()
        if cleaned.get("preview_token") != token:
            self.data = self.data.copy()
            self.data["preview_token"] = token
            self.add_error(None, CONFIRM)
        return cleaned


class RefillForm(PreviewForm):
    previewer = services.preview_refill
    recorder = services.record_refill

    class Meta:
        model = Refill
        fields = [
            "pump",
            "performed_at",
            "withdrawn_ml",
            "volume_added_ml",
            "concentration_mcg_per_ml",
            "drug_product",
            "drug_lot",
            "expires_on",
            "method",
            "notes",
        ]

    def build_input(self) -> services.RefillInput:
        c = self.cleaned_data
        return services.RefillInput(
            performed_at=c["performed_at"],
            withdrawn_ml=c["withdrawn_ml"],
            volume_added_ml=c["volume_added_ml"],
            concentration_mcg_per_ml=c["concentration_mcg_per_ml"],
            drug_product=c["drug_product"],
            drug_lot=c.get("drug_lot", ""),
            expires_on=c.get("expires_on"),
            method=c.get("method", ""),
            notes=c.get("notes", ""),
        )


class ProgramForm(PreviewForm):
    previewer = services.preview_program
    recorder = services.change_program

    flex_steps = forms.JSONField(
        required=False,
        initial=list,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text='Flex mode only: [{"starts": "08:00", "mcg_per_hour": "10"}, {"starts": "20:00", "mcg_per_hour": "6"}]',
    )

    class Meta:
        model = Program
        fields = [
            "pump",
            "effective_at",
            "mode",
            "dose_mcg_per_day",
            "concentration_mcg_per_ml",
            "flex_steps",
            "basal_mcg_per_day",
            "bolus_mcg",
            "boluses_per_day",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "dose_mcg_per_day" in self.fields:  # absent on the read-only page of a saved program
            self.fields["dose_mcg_per_day"].required = False

    def build_input(self) -> services.ProgramInput:
        c = self.cleaned_data
        return services.ProgramInput(
            effective_at=c["effective_at"],
            concentration_mcg_per_ml=c["concentration_mcg_per_ml"],
            mode=c["mode"],
            dose_mcg_per_day=c.get("dose_mcg_per_day"),
            flex_steps=c.get("flex_steps") or [],
            basal_mcg_per_day=c.get("basal_mcg_per_day"),
            bolus_mcg=c.get("bolus_mcg"),
            boluses_per_day=c.get("boluses_per_day"),
        )


class PreviewAdmin(ServiceAddAdmin):
    preview_template = ""
    change_form_template = "admin/pumps/preview_change_form.html"

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            # The add form's own tick boxes stand in for the stored acknowledgement field.
            kwargs["fields"] = self.form.Meta.fields
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [] if obj is None else self.readonly_fields

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return [*self.form.Meta.fields, "acknowledged_warnings", "reason", "preview_token"]
        return [*self.form.Meta.fields, *self.readonly_fields]

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        form = context["adminform"].form
        if getattr(form, "preview", None) is not None:
            context["preview_html"] = render_to_string(self.preview_template, {"p": form.preview, "form": form})
            if list(form.errors) == [forms.forms.NON_FIELD_ERRORS] and form.non_field_errors() == [CONFIRM]:
                # Only the confirmation step: no "Please correct the error below".
                context["errors"] = []
                context["confirming"] = True
        clinic = form.record_clinic()
        context["clinic_time_zone"] = clinic.time_zone if clinic else "the pump's clinic time zone"
        return super().render_change_form(request, context, *args, **kwargs)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        pump_id = request.GET.get("pump")
        pumps = Pump.objects.filter(patient__clinic__in=clinics_writable(request.user, self._label()))
        pump = pumps.select_related("patient__clinic").filter(pk=pump_id).first() if pump_id and pump_id.isdigit() else None
        # Now, on the wall clock of the pump's clinic (naive, so the widget shows it as is).
        zone = pump.patient.clinic.tz if pump else timezone.get_current_timezone()
        initial.setdefault(
            self.moment_field, timezone.localtime(timezone.now(), zone).replace(second=0, microsecond=0, tzinfo=None)
        )
        program = pump.programs.order_by("-effective_at").first() if pump else None
        if program is not None:
            initial.setdefault("concentration_mcg_per_ml", program.concentration_mcg_per_ml)
            self.more_initial(initial, program)
        return initial

    moment_field = ""

    def more_initial(self, initial: dict[str, Any], program: Program) -> None:
        pass


def _flag(flagged: bool) -> SafeString:
    return format_html('<span class="pt-flag">{}</span>', "⚑ flagged") if flagged else mark_safe("")


@admin.register(Refill)
class RefillAdmin(AuditedAdminMixin, PreviewAdmin):
    audit_reason_field = False  # the form asks for the acknowledgement's reason
    form = RefillForm
    clinic_lookup = "pump__patient__clinic"
    preview_template = "admin/pumps/refill/_preview.html"
    moment_field = "performed_at"
    list_display = [
        "performed_at",
        "pump",
        "patient",
        "withdrawn_ml",
        "expected_residual_ml",
        "discrepancy",
        "volume_after_fill_ml",
        "alarm_on",
        "refill_by",
    ]
    list_filter = [
        "discrepancy_flagged",
        ("performed_at", admin.DateFieldListFilter),
        "pump__model",
        ("pump__patient__clinic", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["pump__serial_number", "pump__patient__mrn", "pump__patient__family_name", "drug_lot"]
    date_hierarchy = "performed_at"
    list_select_related = ["pump__model", "pump__patient"]
    readonly_fields = [
        "is_initial_fill",
        "expected_residual_ml",
        "discrepancy_ml",
        "discrepancy_band_ml",
        "discrepancy_flagged",
        "volume_after_fill_ml",
        "low_reservoir_alarm_ml",
        "alarm_on",
        "refill_by",
        "acknowledged_warnings",
        "reason",
        "performed_by",
    ]

    class Media:
        css = CSS

    def more_initial(self, initial: dict[str, Any], program: Program) -> None:
        initial.setdefault("volume_added_ml", program.pump.model.reservoir_ml)

    @admin.display(description="patient")
    def patient(self, obj: Refill) -> str:
        return str(obj.pump.patient)

    @admin.display(description="discrepancy (mL)", ordering="discrepancy_ml")
    def discrepancy(self, obj: Refill) -> SafeString:
        if obj.discrepancy_ml is None:
            return format_html("{}", "initial fill" if obj.is_initial_fill else "-")
        return format_html("{} {}", f"{obj.discrepancy_ml:+}", _flag(obj.discrepancy_flagged))


@admin.register(Program)
class ProgramAdmin(AuditedAdminMixin, PreviewAdmin):
    audit_reason_field = False  # the form asks for the dose change's reason
    form = ProgramForm
    clinic_lookup = "pump__patient__clinic"
    preview_template = "admin/pumps/program/_preview.html"
    moment_field = "effective_at"
    list_display = [
        "effective_at",
        "pump",
        "mode",
        "dose_mcg_per_day",
        "previous_dose_mcg_per_day",
        "concentration_mcg_per_ml",
        "acknowledged",
        "author",
    ]
    list_filter = ["mode", "pump__model", ("pump__patient__clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["pump__serial_number", "pump__patient__mrn", "pump__patient__family_name"]
    list_select_related = ["pump__model", "pump__patient", "author"]
    readonly_fields = ["previous_dose_mcg_per_day", "acknowledged_warnings", "reason_text", "author"]

    class Media:
        css = CSS

    def more_initial(self, initial: dict[str, Any], program: Program) -> None:
        initial.setdefault("mode", program.mode)
        initial.setdefault("dose_mcg_per_day", program.dose_mcg_per_day)

    @admin.display(description="acknowledged")
    def acknowledged(self, obj: Program) -> str:
        return ", ".join(obj.acknowledged_warnings) or "-"

    @admin.display(description="reason")
    def reason_text(self, obj: Program) -> str:
        return obj.reason or "-"


# ----------------------------------------------------------------------------- pumps


class RefillDueFilter(admin.SimpleListFilter):
    title = "refill due"
    parameter_name = "due"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("alarm", "Alarm date reached"),
            ("overdue", "Overdue"),
            ("7", "Due within 7 days"),
            ("14", "Due within 14 days"),
            ("30", "Due within 30 days"),
            ("none", "No refill date"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Pump]) -> QuerySet[Pump]:
        value = self.value()
        if value is None:
            return queryset
        active = queryset.filter(status=PumpStatus.ACTIVE)
        if value == "none":
            return active.filter(refill_by__isnull=True)
        # "Today" is each clinic's own date: a clinic ahead of UTC is a day ahead sometimes.
        now = timezone.now()
        match = Q(pk__in=[])
        for clinic in clinics_for(request.user):
            today = domain.local_date(now, clinic.tz)
            if value == "alarm":
                due = Q(alarm_on__lte=today)
            elif value == "overdue":
                due = Q(refill_by__lt=today)
            elif value in ("7", "14", "30"):
                due = Q(refill_by__gte=today, refill_by__lte=today + timedelta(days=int(value)))
            else:
                return queryset
            match |= Q(patient__clinic=clinic) & due
        return active.filter(match)


class PumpAddForm(StampedForm):
    clinic_field = "patient"
    low_reservoir_alarm_ml = forms.DecimalField(
        required=False, max_digits=7, decimal_places=2, help_text="Blank: the model's default."
    )

    class Meta:
        model = Pump
        fields = list(services.IMPLANT_FIELDS)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors:
            try:
                services.validate_implant(now=self.now, **self._implant_args())
            except ValidationError as exc:
                apply_errors(self, exc)
        return cleaned

    def _implant_args(self) -> dict[str, Any]:
        return dict(self.cleaned_data)

    def _post_clean(self) -> None:
        # Model validation would demand the alarm volume the service fills in.
        if self.instance.low_reservoir_alarm_ml is None and self.cleaned_data.get("model"):
            self.instance.low_reservoir_alarm_ml = self.cleaned_data["model"].default_low_reservoir_alarm_ml
        super()._post_clean()

    def record(self) -> Pump:
        return services.implant_pump(now=self.now, **self._implant_args())


class PumpChangeForm(StampedForm):
    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        alarm_ml = cleaned.get("low_reservoir_alarm_ml")
        if "low_reservoir_alarm_ml" in self.changed_data and alarm_ml is not None:
            try:
                services.validate_alarm_volume(self.instance.model, alarm_ml)
            except ValidationError as exc:
                apply_errors(self, exc)
        return cleaned


class CatheterInline(ScopedInline):
    model = Catheter
    label = "pumps.catheter"
    parent_clinic_lookup = "patient__clinic"
    show_change_link = True  # catheter revisions are recorded on the catheter's page
    fields = ["model", "lot", "tip_level", "implanted_length_cm", "implanted_on"]


class EndPumpForm(forms.Form):
    status = forms.ChoiceField(choices=[(PumpStatus.EXPLANTED, "Explanted"), (PumpStatus.REPLACED, "Replaced")])
    explanted_on = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    explant_reason = forms.CharField(max_length=200)


@admin.register(Pump)
class PumpAdmin(AuditedAdminMixin, StampedFormAdmin):
    clinic_lookup = "patient__clinic"
    list_display = ["serial_number", "patient", "model_number", "phase", "status", "refill_by_display", "alarm_on", "last_flag"]
    # Active pumps first, the most urgent at the top; pumps with no date last.
    ordering = ["status", F("refill_by").asc(nulls_last=True), "pk"]
    list_display_links = ["serial_number", "patient"]
    list_filter = [RefillDueFilter, "phase", "model", "status", ("patient__clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["serial_number", "patient__mrn", "patient__family_name", "patient__given_name"]
    list_select_related = ["patient", "model"]
    inlines = [CatheterInline]
    change_form_template = "admin/pumps/pump/change_form.html"
    readonly_fields = [
        "patient",
        "model",
        "serial_number",
        "implanted_at",
        "status",
        "phase",
        "stable_dose_at",
        "explanted_on",
        "explant_reason",
        "state_panel",
        "charts_panel",
        "history_panel",
        "messages_panel",
    ]
    fieldsets = [
        ("Now", {"fields": ["state_panel"]}),
        ("Charts", {"fields": ["charts_panel"]}),
        (
            "Device",
            {"fields": PumpAddForm.Meta.fields},
        ),
        ("Status", {"fields": ["status", "phase", "stable_dose_at", "explanted_on", "explant_reason"]}),
        ("History", {"fields": ["history_panel"]}),
        ("Messages", {"fields": ["messages_panel"]}),
    ]

    class Media:
        css = CSS

    def get_queryset(self, request: HttpRequest) -> QuerySet[Pump]:
        latest = Refill.objects.filter(pump=OuterRef("pk")).order_by("-performed_at").values("discrepancy_flagged")[:1]
        return super().get_queryset(request).select_related("patient__clinic", "model").annotate(last_flagged=Subquery(latest))

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = PumpAddForm
            kwargs["fields"] = PumpAddForm.Meta.fields
        else:
            kwargs["form"] = PumpChangeForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return [(None, {"fields": PumpAddForm.Meta.fields})]
        return super().get_fieldsets(request, obj)  # self.fieldsets, and the audit's reason

    def audit_related(self, obj: Pump) -> list[Any]:
        return [Catheter.history.filter(pump_id=obj.pk)]  # edited inline on this page

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [] if obj is None else self.readonly_fields

    def get_inlines(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.inlines if obj is not None else []

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        return form.record()

    def save_model(self, request: HttpRequest, obj: Pump, form: Any, change: bool) -> None:
        if not change:
            return
        # Only what this form changed: a refill or dose change saved meanwhile keeps its dates.
        services.update_pump_details(obj, {name: form.cleaned_data[name] for name in form.changed_data})

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)

    @admin.display(description="model", ordering="model__model_number")
    def model_number(self, obj: Pump) -> str:
        return f"{obj.model.name} {obj.model.model_number}"

    @admin.display(description="refill by", ordering="refill_by")
    def refill_by_display(self, obj: Pump) -> SafeString:
        if obj.refill_by is None:
            return mark_safe("-")
        today = domain.local_date(timezone.now(), obj.patient.clinic.tz)
        css = "pt-overdue" if obj.refill_by < today else ("pt-due" if obj.refill_by <= today + timedelta(days=7) else "")
        return format_html('<span class="{}">{}</span>', css, obj.refill_by.isoformat())

    @admin.display(description="last refill")
    def last_flag(self, obj: Pump) -> SafeString:
        return _flag(bool(getattr(obj, "last_flagged", False)))

    @admin.display(description="current state")
    def state_panel(self, obj: Pump) -> str:
        state = services.pump_state(obj, timezone.now())
        today = domain.local_date(timezone.now(), obj.patient.clinic.tz)
        return render_to_string("admin/pumps/pump/_state.html", {"pump": obj, "s": state, "today": today})

    @admin.display(description="reservoir and dose")
    def charts_panel(self, obj: Pump) -> str:
        # Two queries whatever the history's length: the programs and the refills.
        now = timezone.now()
        programs = list(obj.programs.all())
        refills = list(obj.refills.all())
        reservoir = charts.reservoir_chart(obj, programs, refills, now)
        dose = charts.dose_chart(obj, programs, now)
        return render_to_string(
            "admin/pumps/pump/_charts.html",
            {
                "reservoir": reservoir,
                "dose": dose,
                # The SVG is built from escaped text only (charts._esc).
                "reservoir_svg": mark_safe(charts.reservoir_svg(reservoir)),  # noqa: S308
                "dose_svg": mark_safe(charts.dose_svg(dose)),  # noqa: S308
            },
        )

    @admin.display(description="programs and refills")
    def history_panel(self, obj: Pump) -> str:
        return render_to_string(
            "admin/pumps/pump/_history.html",
            {
                "programs": obj.programs.select_related("author").order_by("-effective_at"),
                "refills": obj.refills.select_related("performed_by").order_by("-performed_at"),
                "events": obj.events.order_by("-occurred_at")[:20],
            },
        )

    @admin.display(description="messages and escalations")
    def messages_panel(self, obj: Pump) -> str:
        from notifications.admin import pump_messages_panel

        return pump_messages_panel(obj)

    # -- actions on one pump: phase, explant ------------------------------------------

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/phase/", wrap(self.phase_view), name="pumps_pump_phase"),
            path("<int:pk>/end/", wrap(self.end_view), name="pumps_pump_end"),
            path("<int:pk>/worksheet/", wrap(self.worksheet_view), name="pumps_pump_worksheet"),
            path("<int:pk>/emergency-card.pdf", wrap(self.emergency_card_view), name="pumps_pump_emergency_card"),
            *super().get_urls(),
        ]

    def _own_pump(self, request: HttpRequest, pk: int) -> Pump:
        return get_object_or_404(self.get_queryset(request), pk=pk)

    def phase_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        pump = self._own_pump(request, pk)
        change_url = reverse("admin:pumps_pump_change", args=[pump.pk])
        if request.method != "POST" or not may_set_phase(request.user, pump.patient.clinic):
            self.message_user(request, "Only a clinician may record the stable dose.", messages.ERROR)
            return HttpResponseRedirect(change_url)
        try:
            services.set_phase(pump, request.POST.get("phase", ""), now=timezone.now())
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            self.message_user(request, f"Phase set to {pump.get_phase_display()}; refill-by is now {pump.refill_by or '-'}.")
        return HttpResponseRedirect(change_url)

    def end_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        pump = self._own_pump(request, pk)
        if not may_write(request.user, "pumps.pump", pump.patient.clinic):
            self.message_user(request, "You may not change this pump.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:pumps_pump_change", args=[pump.pk]))
        form = EndPumpForm(request.POST or None, initial={"explanted_on": timezone.localdate()})
        if request.method == "POST" and form.is_valid():
            try:
                services.end_pump(
                    pump,
                    status=form.cleaned_data["status"],
                    on=form.cleaned_data["explanted_on"],
                    reason=form.cleaned_data["explant_reason"],
                    now=timezone.now(),
                )
            except ValidationError as exc:
                apply_errors(form, exc)
            else:
                self.message_user(request, f"{pump} recorded as {pump.get_status_display().lower()}.")
                return HttpResponseRedirect(reverse("admin:pumps_pump_change", args=[pump.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Explant or replace {pump}",
            "form": form,
            "pump": pump,
        }
        return TemplateResponse(request, "admin/pumps/pump/end.html", context)

    # -- documents: the refill worksheet and the emergency card --------------------------

    def _readable_pump(self, request: HttpRequest, pk: int) -> Pump:
        """A pump of the user's clinics (another clinic's: 404), for staff members only."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return self._own_pump(request, pk)

    def worksheet_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        pump = self._readable_pump(request, pk)
        if not pump.is_active:
            self.message_user(request, "This pump is no longer implanted: there is no refill visit to prepare.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:pumps_pump_change", args=[pump.pk]))
        sheet = documents.worksheet(pump, timezone.now())
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Refill worksheet: {pump.patient}",
            "sheet": sheet,
            "pump": pump,
            "card_language": pump.patient.get_language_display(),
        }
        return TemplateResponse(request, "admin/pumps/pump/worksheet.html", context)

    def emergency_card_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        pump = self._readable_pump(request, pk)
        if not pump.is_active:
            # A card for a removed pump would tell an emergency doctor the wrong device and dose.
            self.message_user(
                request, "This pump is no longer implanted: print the card of the patient's active pump.", messages.WARNING
            )
            return HttpResponseRedirect(reverse("admin:pumps_pump_change", args=[pump.pk]))
        now = timezone.now()
        state = services.pump_state(pump, now)
        pdf = documents.emergency_card_pdf(
            pump, state, pump.patient.language, issued_on=domain.local_date(now, pump.patient.clinic.tz)
        )
        response = HttpResponse(pdf, content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{documents.card_filename(pump)}"'
        # Health data: never kept by a shared cache or the browser's disk cache.
        response["Cache-Control"] = "private, no-store"
        return response

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        obj = kwargs.get("obj")
        if obj is not None:
            context["may_set_phase"] = obj.is_active and may_set_phase(request.user, obj.patient.clinic)
            context["may_record"] = obj.is_active and may_write(request.user, "pumps.refill", obj.patient.clinic)
            context["may_program"] = obj.is_active and may_write(request.user, "pumps.program", obj.patient.clinic)
            context["may_book"] = obj.is_active and may_write(request.user, "pumps.appointment", obj.patient.clinic)
            context["Phase"] = Phase
        return super().render_change_form(request, context, *args, **kwargs)


@admin.register(PumpModel)
class PumpModelAdmin(ClinicScopedAdmin):
    list_display = [
        "name",
        "model_number",
        "reservoir_ml",
        "default_low_reservoir_alarm_ml",
        "accuracy_pct",
        "mri_rule",
        "mri_max_tesla",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PumpModel]:
        return PumpModel.objects.all()  # the catalogue is shared by every clinic

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return bool(request.user.is_superuser)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)


# ----------------------------------------------------------------------------- screening, events


class ScreeningForm(StampedForm):
    clinic_field = "patient"

    class Meta:
        model = ScreeningTrial
        fields = ["patient", "given_at", "dose_mcg", "route", "outcome", "effect_duration_hours", "notes"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        patient, given_at, dose = cleaned.get("patient"), cleaned.get("given_at"), cleaned.get("dose_mcg")
        if self.instance.pk is None and patient is not None and given_at is not None and dose is not None:
            try:
                services.validate_screening(patient=patient, given_at=given_at, dose_mcg=dose, now=self.now)
            except ValidationError as exc:
                apply_errors(self, exc)
        return cleaned

    def record(self) -> ScreeningTrial:
        c = dict(self.cleaned_data)
        c["performed_by"] = self.request.user
        return services.record_screening(now=self.now, **c)


@admin.register(ScreeningTrial)
class ScreeningTrialAdmin(AuditedAdminMixin, ServiceAddAdmin):
    form = ScreeningForm
    clinic_lookup = "patient__clinic"
    list_display = ["given_at", "patient", "dose_mcg", "route", "outcome", "effect_duration_hours"]
    list_filter = ["outcome", "dose_mcg", ("patient__clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["patient__mrn", "patient__family_name"]
    list_select_related = ["patient"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The outcome is known hours after the dose: allow completing it.
        return ClinicScopedAdmin.has_change_permission(self, request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["patient", "given_at", "dose_mcg"] if obj is not None else []


class EventForm(StampedForm):
    class Meta:
        model = ClinicalEvent
        fields = ["pump", "kind", "occurred_at", "field_strength_tesla", "notes"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        pump, kind, at = cleaned.get("pump"), cleaned.get("kind"), cleaned.get("occurred_at")
        if pump is not None and kind and at is not None:
            try:
                services.validate_event(pump=pump, kind=kind, occurred_at=at, now=self.now, **self._details())
            except ValidationError as exc:
                apply_errors(self, exc)
        return cleaned

    def _details(self) -> dict[str, Any]:
        c = self.cleaned_data
        return {"field_strength_tesla": c.get("field_strength_tesla"), "notes": c.get("notes", "")}

    def record(self) -> ClinicalEvent:
        c = self.cleaned_data
        return services.record_event(
            pump=c["pump"], kind=c["kind"], occurred_at=c["occurred_at"], now=self.now, by=self.request.user, **self._details()
        )


@admin.register(ClinicalEvent)
class ClinicalEventAdmin(AuditedAdminMixin, ServiceAddAdmin):
    form = EventForm
    clinic_lookup = "pump__patient__clinic"
    list_display = ["occurred_at", "kind", "pump", "patient", "field_strength_tesla"]
    list_filter = [
        "kind",
        ("pump__patient__clinic", admin.RelatedOnlyFieldListFilter),
        ("occurred_at", admin.DateFieldListFilter),
    ]
    search_fields = ["pump__serial_number", "pump__patient__mrn", "pump__patient__family_name"]
    list_select_related = ["pump__patient", "pump__model"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        initial.setdefault("occurred_at", timezone.localtime().replace(second=0, microsecond=0))
        return initial

    @admin.display(description="patient")
    def patient(self, obj: ClinicalEvent) -> str:
        return str(obj.pump.patient)


class CatheterRevisionInline(ScopedInline):
    model = CatheterRevision
    label = "pumps.catheter"
    parent_clinic_lookup = "pump__patient__clinic"


@admin.register(Catheter)
class CatheterAdmin(AuditedAdminMixin, ClinicScopedAdmin):
    clinic_lookup = "pump__patient__clinic"
    list_display = ["pump", "model", "lot", "tip_level", "implanted_length_cm", "implanted_on"]
    search_fields = ["pump__serial_number", "pump__patient__mrn", "lot"]
    inlines = [CatheterRevisionInline]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return False  # reached from the pump page


from pumps import admin_appointments  # noqa: E402,F401 (registers the appointment admin)
