from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from patients import services as patient_services
from patients.access import CLINIC_MESSAGE_POLICY_FIELDS, MESSAGE_POLICY_LABEL, is_clinician, may_write
from patients.audit_admin import AuditedAdminMixin, PatientAuditExportMixin
from patients.models import ORIGIN_BY_DIAGNOSIS, Caregiver, Clinic, Membership, Patient
from patients.scoped_admin import ClinicScopedAdmin, ScopedInline
from pumps import services as pump_services

admin.site.site_header = "pumptrack"
admin.site.site_title = "pumptrack"
admin.site.index_title = "ITB pump programme"


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return True

    def _superuser(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    has_add_permission = has_change_permission = has_delete_permission = _superuser


# The clinic's message policy (DESIGN.md "Messages"; defaults on the model).
MESSAGE_POLICY_FIELDS = [
    "reminder_days",
    "high_risk_extra_reminder_days",
    "reminder_time",
    ("quiet_hours_start", "quiet_hours_end"),
    "escalation_time",
    ("heat_season_month", "heat_season_day"),
    "alcohol_reminder_months",
    "battery_planning_months",
    "post_mri_check_hours",
    "notification_email",
]


@admin.register(Clinic)
class ClinicAdmin(AuditedAdminMixin, ClinicScopedAdmin):
    clinic_lookup = ""
    list_display = ["name", "time_zone", "refill_margin_days", "titration_interval_days", "maintenance_interval_days"]
    search_fields = ["name"]
    inlines = [MembershipInline]
    fieldsets = [
        (None, {"fields": ["name", "time_zone", "phone", "email"]}),
        (
            "Refill policy",
            {
                "fields": ["refill_margin_days", "titration_interval_days", "maintenance_interval_days"],
                "description": "Refill-by = earliest of (alarm date − margin), (last visit + phase interval) and "
                "(fill + 180 days). Intervals may not exceed the 180-day drug-stability ceiling.",
            },
        ),
        (
            "Messages",
            {
                "fields": MESSAGE_POLICY_FIELDS,
                "description": "Reminders, safety warnings and staff escalations. Times are local: the recipient's "
                "for patients and caregivers, the clinic's for escalations. Saving a change re-plans the clinic's "
                "pending messages.",
            },
        ),
    ]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return bool(request.user.is_superuser)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Coordinators manage messages: they may open the page to change the message policy.
        return may_write(request.user, MESSAGE_POLICY_LABEL, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None or may_write(request.user, "patients.clinic", obj):
            return self.readonly_fields
        # The refill policy decides refill-by dates: a clinician's, not a coordinator's.
        shown = [name for _, options in self.fieldsets for row in options["fields"] for name in _names(row)]
        return [name for name in shown if name not in CLINIC_MESSAGE_POLICY_FIELDS]

    def audit_related(self, obj: Clinic) -> list[Any]:
        return [Membership.history.filter(clinic_id=obj.pk)]  # who holds which role: access changes

    def save_model(self, request: HttpRequest, obj: Clinic, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change:
            recomputed, replanned = patient_services.after_clinic_change(obj, form.changed_data)
            if recomputed:
                self.message_user(request, f"Refill-by dates recomputed for {recomputed} active pump(s).")
            if replanned:
                self.message_user(request, f"Messages re-planned for {replanned} pump(s).")


def _names(row: Any) -> tuple[str, ...]:
    """A fieldset row's field names: one name, or several shown side by side."""
    return (row,) if isinstance(row, str) else tuple(row)


class CaregiverInline(ScopedInline):
    model = Caregiver
    label = "patients.caregiver"
    parent_clinic_lookup = "clinic"
    fields = ["name", "relationship", "email", "phone", "language", "receives_safety_messages"]


class RiskFilter(admin.SimpleListFilter):
    title = "withdrawal risk"
    parameter_name = "risk"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("high", "High risk (boxed warning)"), ("hearing", "Hearing impairment")]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        from django.db.models import Q

        if self.value() == "high":
            return queryset.filter(Q(sci_t6_or_above=True) | Q(communication_difficulty=True) | Q(withdrawal_history=True))
        if self.value() == "hearing":
            return queryset.filter(hearing_impairment=True)
        return queryset


@admin.register(Patient)
class PatientAdmin(PatientAuditExportMixin, AuditedAdminMixin, ClinicScopedAdmin):
    clinic_lookup = "clinic"
    list_display = ["mrn", "family_name", "given_name", "diagnosis", "spasticity_origin", "risk", "clinic"]
    list_display_links = ["mrn", "family_name"]
    list_filter = ["clinic", "diagnosis", "spasticity_origin", RiskFilter, "language"]
    search_fields = ["mrn", "family_name", "given_name", "pumps__serial_number"]
    inlines = [CaregiverInline]
    readonly_fields = ["eligibility", "pumps_summary", "screening_summary"]
    fieldsets = [
        (None, {"fields": ["clinic", "mrn", "given_name", "family_name", "birth_date"]}),
        ("Diagnosis", {"fields": ["diagnosis", "spasticity_origin", "screened_elsewhere", "eligibility"]}),
        (
            "Risk (boxed warning)",
            {"fields": ["sci_t6_or_above", "communication_difficulty", "withdrawal_history", "hearing_impairment"]},
        ),
        ("Contact", {"fields": ["email", "phone", "language", "time_zone", "contact_by_email", "contact_by_sms"]}),
        ("Pumps and screening", {"fields": ["pumps_summary", "screening_summary"]}),
    ]

    CLINICAL_FIELDS = patient_services.CLINICAL_FIELDS

    def audit_related(self, obj: Patient) -> list[Any]:
        return [Caregiver.history.filter(patient_id=obj.pk)]  # edited inline on this page

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("clinic")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(self.readonly_fields)
        if obj is None:
            if not is_clinician(request.user):
                fields.append("screened_elsewhere")
        elif not is_clinician(request.user, obj.clinic):
            fields.extend(self.CLINICAL_FIELDS)
        return fields

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None:
            return form  # the clinic is known: get_readonly_fields already decided
        user = request.user

        class NewPatientForm(form):  # type: ignore[valid-type,misc]
            def clean(self) -> dict[str, Any]:
                cleaned: dict[str, Any] = super().clean()
                clinic = cleaned.get("clinic")
                # The add page cannot know the clinic in advance: a clinician elsewhere must not
                # vouch for a screening in a clinic where they are a nurse or coordinator.
                if cleaned.get("screened_elsewhere") and clinic is not None and not is_clinician(user, clinic):
                    self.add_error("screened_elsewhere", "Only a clinician of this clinic may record this.")
                return cleaned

        return NewPatientForm

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if change:
            caregivers_changed = any(fs.model is Caregiver and fs.has_changed() for fs in formsets)
            patient_services.after_patient_change(form.instance, form.changed_data, caregivers_changed=caregivers_changed)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        diagnosis = initial.get("diagnosis")
        if diagnosis in ORIGIN_BY_DIAGNOSIS:
            initial.setdefault("spasticity_origin", ORIGIN_BY_DIAGNOSIS[diagnosis])
        return initial

    @admin.display(boolean=True, description="high risk")
    def risk(self, obj: Patient) -> bool:
        return obj.high_risk

    @admin.display(description="eligible for implant")
    def eligibility(self, obj: Patient) -> str:
        if obj.pk is None:
            return "-"
        return "Yes" if pump_services.is_eligible(obj) else "No: needs a positive screening trial"

    @admin.display(description="pumps")
    def pumps_summary(self, obj: Patient) -> str:
        if obj.pk is None:
            return "-"
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a>: {}, {}{}</li>',
            (
                (
                    reverse("admin:pumps_pump_change", args=[p.pk]),
                    p,
                    p.get_status_display(),
                    p.get_phase_display(),
                    f", refill by {p.refill_by:%Y-%m-%d}" if p.refill_by else "",
                )
                for p in obj.pumps.select_related("model").order_by("-implanted_at")
            ),
        )
        add = reverse("admin:pumps_pump_add") + f"?patient={obj.pk}"
        return format_html('<ul>{}</ul><a class="addlink" href="{}">Implant a pump</a>', rows, add)

    @admin.display(description="screening trials")
    def screening_summary(self, obj: Patient) -> str:
        if obj.pk is None:
            return "-"
        rows = format_html_join("", "<li>{}</li>", ((str(t),) for t in obj.screening_trials.all()))
        add = reverse("admin:pumps_screeningtrial_add") + f"?patient={obj.pk}"
        return format_html('<ul>{}</ul><a class="addlink" href="{}">Record a screening dose</a>', rows, add)
