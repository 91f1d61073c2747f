"""Admin base class: clinic scoping, role permissions and service errors on forms."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from patients.access import clinics_for, clinics_writable, is_member, may_write
from patients.models import Clinic


def apply_errors(form: forms.BaseForm, exc: ValidationError) -> None:
    """Attach a service's field errors to the form's fields (others to the form itself)."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for name, errors in exc.message_dict.items():
        form.add_error(name if name in form.fields else None, errors)


class ClinicScopedAdmin(admin.ModelAdmin):
    """Staff see and change only their clinics' records; writes follow the role matrix."""

    clinic_lookup = ""  # e.g. "patient__clinic"; "" for Clinic itself

    def _label(self) -> str:
        return f"{self.opts.app_label}.{self.opts.model_name}"

    def clinic_of(self, obj: Any) -> Clinic | None:
        if obj is None:
            return None
        for part in [p for p in self.clinic_lookup.split("__") if p]:
            obj = getattr(obj, part)
        return obj

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        field = f"{self.clinic_lookup}__in" if self.clinic_lookup else "pk__in"
        return qs.filter(**{field: clinics_for(request.user)})

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_member(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_member(request.user)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return may_write(request.user, self._label())

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_write(request.user, self._label(), self.clinic_of(obj))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Clinical records are corrected by new records, not deleted.
        return bool(request.user.is_superuser)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # Choices come only from clinics where the user may write this kind of record: a
        # nurse who is a viewer elsewhere cannot pick, and so cannot write to, that clinic.
        kwargs["queryset"] = scoped_choices(db_field.related_model, clinics_writable(request.user, self._label()))
        if kwargs["queryset"] is None:
            del kwargs["queryset"]
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def scoped_choices(related: Any, clinics: QuerySet[Clinic]) -> QuerySet[Any] | None:
    """The records of `related` that belong to `clinics`, or None if it has no clinic."""
    from patients.models import Patient
    from pumps.models import Pump

    if related is Clinic:
        return clinics
    if related is Patient:
        return Patient.objects.filter(clinic__in=clinics).select_related("clinic")
    if related is Pump:
        return Pump.objects.filter(patient__clinic__in=clinics).select_related("model", "patient")
    return None


class ScopedInline(admin.TabularInline):
    """Inline rows may be written only where the user may write them in the parent's clinic."""

    extra = 0
    label = ""
    parent_clinic_lookup = ""  # from the parent object to its clinic, e.g. "patient__clinic"

    def _clinic(self, obj: Any) -> Clinic | None:
        if obj is None:
            return None
        for part in self.parent_clinic_lookup.split("__"):
            obj = getattr(obj, part)
        return obj

    def _may_write(self, request: HttpRequest, obj: Any) -> bool:
        if obj is None:  # a new parent: its clinic choices are already limited to writable ones
            return may_write(request.user, self.label)
        return may_write(request.user, self.label, self._clinic(obj))

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_member(request.user)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_write(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_write(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_write(request, obj)
