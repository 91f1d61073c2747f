"""The admin's face of the audit trail (issue 6): each tracked record's History page, an
optional "Reason for change" on change forms, and one patient's export.

Combined with `ClinicScopedAdmin` (put the mixin first): the History page finds the record
through the admin's clinic-scoped queryset, so another clinic's record answers 404, and a
viewer sees the history of their own clinic's records. There is no revert: the library's
per-version form view (which saves on POST even when the revert button is hidden) is not
routed at all, and `SIMPLE_HISTORY_REVERT_DISABLED` is set; clinical records change only
through the services' rules.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.text import capfirst

from patients import audit
from patients.history import change_reason
from patients.models import Patient

REASON_FIELD = "change_reason"


class ReasonField(forms.CharField):
    """Never "changed": services that save exactly `form.changed_data` must not see it."""

    def has_changed(self, initial: Any, data: Any) -> bool:
        return False


class AuditedAdminMixin:
    """History page with readable diffs and the "Reason for change" field; first in the bases."""

    # False where the form already asks for the reason (a dose change, a refill) or where
    # records are never changed after they are added.
    audit_reason_field = True
    object_history_template = "admin/audit/object_history.html"

    def audit_related(self, obj: Any) -> list[Any]:
        """History querysets of records edited inline on this page, shown with its own."""
        return []

    def _asks_reason(self, request: HttpRequest, obj: Any) -> bool:
        return bool(self.audit_reason_field and obj is not None and self.has_change_permission(request, obj))  # type: ignore[attr-defined]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if self._asks_reason(request, obj):
            base = kwargs.get("form") or self.form  # type: ignore[attr-defined]
            kwargs["form"] = type(
                f"Reason{base.__name__}",
                (base,),
                {
                    REASON_FIELD: ReasonField(
                        label="Reason for change",
                        required=False,
                        max_length=500,
                        widget=forms.Textarea(attrs={"rows": 2}),
                        help_text="Optional. Kept with this change in the record's history (who, when, what and why).",
                    )
                },
            )
        return super().get_form(request, obj, change=change, **kwargs)  # type: ignore[misc]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)  # type: ignore[misc]
        if not self._asks_reason(request, obj):
            return fieldsets
        # Without declared fieldsets Django lists the form's fields, the reason among them.
        cleaned = [(name, {**opts, "fields": [f for f in opts["fields"] if f != REASON_FIELD]}) for name, opts in fieldsets]
        return [*cleaned, ("Audit", {"fields": [REASON_FIELD]})]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = super().get_readonly_fields(request, obj)  # type: ignore[misc]
        return [f for f in fields if f != REASON_FIELD]

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: Any = None
    ) -> Any:
        # Everything this save writes (the record, its inlines, what the services change)
        # carries the reason typed on the form.
        text = request.POST.get(REASON_FIELD, "") if request.method == "POST" else ""
        with change_reason(text[:500]):
            return super().changeform_view(request, object_id, form_url, extra_context)  # type: ignore[misc]

    def history_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        model = self.model  # type: ignore[attr-defined]
        obj = self.get_queryset(request).filter(pk=unquote(object_id)).first()  # type: ignore[attr-defined]
        if obj is None:
            raise Http404("No such record in your clinics.")
        if not self.has_view_permission(request, obj):  # type: ignore[attr-defined]
            raise PermissionDenied
        clinic = self.clinic_of(obj) if hasattr(self, "clinic_of") else None
        tz = clinic.tz if clinic is not None else audit.UTC_ZONE
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": f"History: {obj}",
            "subtitle": None,
            "object": obj,
            "opts": model._meta,
            "app_label": model._meta.app_label,
            "module_name": capfirst(str(model._meta.verbose_name_plural)),
            "entries": audit.record_entries(obj, tz, self.audit_related(obj)),
            "time_zone": str(tz),
            "export_url": reverse("admin:patients_patient_audit", args=[obj.pk]) if isinstance(obj, Patient) else "",
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name  # type: ignore[attr-defined]
        return TemplateResponse(request, self.object_history_template, context)


class AuditExportForm(forms.Form):
    # Text fields: `audit.parse_range` checks them and names the field in its errors.
    start = forms.CharField(
        label="From",
        required=False,
        help_text="YYYY-MM-DD, the clinic's day, included.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    end = forms.CharField(
        label="To", required=False, help_text="YYYY-MM-DD, included.", widget=forms.DateInput(attrs={"type": "date"})
    )
    fmt = forms.ChoiceField(label="Format", choices=[("csv", "CSV"), ("json", "JSON")], initial="csv", required=False)


class PatientAuditExportMixin:
    """`<patient>/audit/`: a from/to form that downloads every change to the patient's records."""

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.audit_export_view)  # type: ignore[attr-defined]
        return [path("<int:pk>/audit/", view, name="patients_patient_audit"), *super().get_urls()]  # type: ignore[misc]

    def audit_export_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        patient = self.get_queryset(request).filter(pk=pk).first()  # type: ignore[attr-defined]
        if patient is None:
            raise Http404("No such patient in your clinics.")
        if not self.has_view_permission(request, patient):  # type: ignore[attr-defined]
            raise PermissionDenied
        form = AuditExportForm(request.GET or None)
        if request.GET:
            try:
                start, end = audit.parse_range(request.GET.get("start"), request.GET.get("end"))
            except ValidationError as exc:
                for name, messages in exc.message_dict.items():
                    form.add_error({"from": "start", "to": "end"}[name], messages)
            else:
                fmt = request.GET.get("fmt") or "csv"
                found = audit.patient_entries(patient, start, end)
                body, kind = (audit.to_json(found), "application/json") if fmt == "json" else (audit.to_csv(found), "text/csv")
                response = HttpResponse(body, content_type=f"{kind}; charset=utf-8")
                name = audit.export_filename(patient, start, end, "json" if fmt == "json" else "csv")
                response["Content-Disposition"] = f'attachment; filename="{name}"'
                return response
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": f"Audit history: {patient}",
            "subtitle": None,
            "object": patient,
            "opts": Patient._meta,
            "form": form,
            "time_zone": patient.clinic.time_zone,
        }
        return TemplateResponse(request, "admin/audit/export.html", context, status=400 if form.errors else 200)
