"""Who may see and change what: clinic scoping and the role matrix.

Staff see only the clinics they belong to (superusers see all). Writes are allowed by role
in the record's own clinic. The matrix as users read it is README.md "Roles and
permissions"; tests/test_permission_matrix.py checks every cell of that table against the
admin, the API, FHIR and the staff pages.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from patients.models import Clinic, Membership, Role

# Which roles may add or change records of each model (clinicians program doses; nurses
# record refills and events; coordinators manage contacts, appointments and messages;
# viewers read).
WRITE_ROLES: dict[str, frozenset[str]] = {
    # The clinic's refill policy (margin, phase intervals), zone and phone decide refill-by
    # dates: a clinician's. Its message policy is also the coordinators' (they manage messages).
    "patients.clinic": frozenset({Role.CLINICIAN}),
    "patients.clinic.message_policy": frozenset({Role.CLINICIAN, Role.COORDINATOR}),
    "patients.patient": frozenset({Role.CLINICIAN, Role.NURSE, Role.COORDINATOR}),
    "patients.caregiver": frozenset({Role.CLINICIAN, Role.NURSE, Role.COORDINATOR}),
    "pumps.pump": frozenset({Role.CLINICIAN, Role.NURSE}),
    "pumps.catheter": frozenset({Role.CLINICIAN, Role.NURSE}),
    "pumps.screeningtrial": frozenset({Role.CLINICIAN, Role.NURSE}),
    "pumps.program": frozenset({Role.CLINICIAN}),
    "pumps.refill": frozenset({Role.CLINICIAN, Role.NURSE}),
    "pumps.clinicalevent": frozenset({Role.CLINICIAN, Role.NURSE}),
    # Escalations are acknowledged and resolved by whoever acts on them.
    "notifications.escalation": frozenset({Role.CLINICIAN, Role.NURSE, Role.COORDINATOR}),
    # Messages are read-only records; coordinators lift and add contact blocks.
    "notifications.contactblock": frozenset({Role.CLINICIAN, Role.NURSE, Role.COORDINATOR}),
    # Nurses and coordinators book refill visits and log outreach calls (issue 5).
    "pumps.appointment": frozenset({Role.CLINICIAN, Role.NURSE, Role.COORDINATOR}),
    "workspace.outreachattempt": frozenset({Role.CLINICIAN, Role.NURSE, Role.COORDINATOR}),
    # Outbound webhooks: who connects the clinic's EHR or scheduling system.
    "webhooks.webhookendpoint": frozenset({Role.CLINICIAN, Role.COORDINATOR}),
    "integrations.calendarfeed": frozenset({Role.CLINICIAN, Role.NURSE, Role.COORDINATOR}),
}
# Recording the stable dose moves a pump to maintenance: a prescribing decision.
PHASE_ROLES = frozenset({Role.CLINICIAN})

# The clinic fields under "patients.clinic.message_policy": when and how reminders and
# escalations go out. Every other clinic field needs "patients.clinic". A change to these
# (or to the clinic's name and phone, which messages quote) re-plans messages
# (patients.services.MESSAGE_POLICY_FIELDS).
MESSAGE_POLICY_LABEL = "patients.clinic.message_policy"
CLINIC_MESSAGE_POLICY_FIELDS = frozenset(
    {
        "reminder_days",
        "high_risk_extra_reminder_days",
        "reminder_time",
        "quiet_hours_start",
        "quiet_hours_end",
        "escalation_time",
        "heat_season_month",
        "heat_season_day",
        "alcohol_reminder_months",
        "battery_planning_months",
        "post_mri_check_hours",
        "notification_email",
    }
)


def clinics_for(user: Any) -> QuerySet[Clinic]:
    if not user.is_authenticated or not user.is_active:
        return Clinic.objects.none()
    if user.is_superuser:
        return Clinic.objects.all()
    return Clinic.objects.filter(memberships__user=user)


def clinics_writable(user: Any, label: str) -> QuerySet[Clinic]:
    """Clinics in which `user` may add or change `label` records (viewer clinics excluded)."""
    if not user.is_authenticated or not user.is_active or not user.is_staff:
        return Clinic.objects.none()
    if user.is_superuser:
        return Clinic.objects.all()
    return Clinic.objects.filter(memberships__user=user, memberships__role__in=WRITE_ROLES.get(label, frozenset()))


def roles_for(user: Any) -> set[str]:
    if not user.is_authenticated or not user.is_active:
        return set()
    return set(Membership.objects.filter(user=user).values_list("role", flat=True))


def is_member(user: Any) -> bool:
    return bool(user.is_active and user.is_staff and (user.is_superuser or roles_for(user)))


def may_write(user: Any, label: str, clinic: Clinic | None = None) -> bool:
    """Whether `user` may add or change `label` records (in `clinic`, when given)."""
    if not user.is_active or not user.is_staff:
        return False
    if user.is_superuser:
        return True
    memberships = Membership.objects.filter(user=user, role__in=WRITE_ROLES.get(label, frozenset()))
    if clinic is not None:
        memberships = memberships.filter(clinic=clinic)
    return memberships.exists()


def is_clinician(user: Any, clinic: Clinic | None = None) -> bool:
    """Clinical decisions: the stable dose, and the patient facts the dose rules depend on
    (screening documented elsewhere, spasticity origin, birth date, diagnosis)."""
    if not user.is_active or not user.is_staff:
        return False
    if user.is_superuser:
        return True
    memberships = Membership.objects.filter(user=user, role__in=PHASE_ROLES)
    if clinic is not None:
        memberships = memberships.filter(clinic=clinic)
    return memberships.exists()


def may_set_phase(user: Any, clinic: Clinic) -> bool:
    return is_clinician(user, clinic)
