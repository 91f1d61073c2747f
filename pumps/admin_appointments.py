"""Refill appointments in the admin (issue 5)."""

from __future__ import annotations

from django.contrib import admin

from patients.scoped_admin import ClinicScopedAdmin
from pumps.models import Appointment


@admin.register(Appointment)
class AppointmentAdmin(ClinicScopedAdmin):
    clinic_lookup = "pump__patient__clinic"
    list_display = ["starts_at", "pump", "location", "status"]
