"""Outreach attempts in the admin: a scoped, read-only history (they are logged from the
worklist, where the form knows the pump and the clinic's clock)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from patients.audit_admin import AuditedAdminMixin
from patients.scoped_admin import ClinicScopedAdmin
from workspace.models import OutreachAttempt


@admin.register(OutreachAttempt)
class OutreachAttemptAdmin(AuditedAdminMixin, ClinicScopedAdmin):
    clinic_lookup = "patient__clinic"
    list_display = ["at", "patient", "pump", "channel", "outcome", "by", "note"]
    list_filter = ["outcome", "channel", ("patient__clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["patient", "pump__model", "by"]
    search_fields = ["patient__mrn", "patient__family_name", "pump__serial_number", "note"]
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False  # logged from the worklist row (workspace:outreach)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a record of what happened: a correction is a new attempt with a note

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
