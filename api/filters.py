"""List filters (django-filter). Dates like "today" are each clinic's own local date."""

from __future__ import annotations

import zoneinfo
from datetime import timedelta
from typing import Any

import django_filters
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone
from rest_framework.filters import OrderingFilter

from api.fields import StorableIsoDateTimeRangeField
from notifications.models import Escalation, Message, Status
from patients.models import Clinic, Patient
from pumps.domain import local_date
from pumps.models import Appointment, ClinicalEvent, Program, Pump, PumpStatus, Refill, ScreeningTrial


def by_local_today(field: str, lookup: str, offset_days: int = 0) -> Q:
    """`field <lookup> (clinic-local today + offset)` for pumps of every clinic zone.

    A pump is due by its clinic's calendar, not UTC's: a clinic in Honolulu is still on
    yesterday when London's morning list is printed.
    """
    now = timezone.now()
    q = Q(pk__in=[])
    for zone in Clinic.objects.values_list("time_zone", flat=True).distinct():
        today = local_date(now, zoneinfo.ZoneInfo(zone))
        q |= Q(patient__clinic__time_zone=zone, **{f"{field}__{lookup}": today + timedelta(days=offset_days)})
    return q


class DateTimeRangeFilter(django_filters.IsoDateTimeFromToRangeFilter):
    """`<name>_after` / `<name>_before`, ISO 8601; offsets and years a database can store."""

    field_class = StorableIsoDateTimeRangeField


class StableOrderingFilter(OrderingFilter):
    """Ordering that always ends with the id, so that pages cut from it never repeat or skip
    a row when the sort key ties (two patients named Garcia, pumps due the same day)."""

    def get_ordering(self, request: Any, queryset: QuerySet[Any], view: Any) -> list[Any]:
        ordering = list(super().get_ordering(request, queryset, view) or queryset.query.order_by or queryset.model._meta.ordering)
        aliases = getattr(view, "ordering_aliases", {})
        ordering = [
            (o[0] if o.startswith("-") else "") + aliases[o.lstrip("-")] if isinstance(o, str) and o.lstrip("-") in aliases else o
            for o in ordering
        ]
        names = {o if isinstance(o, str) else "" for o in ordering}
        if not names & {"pk", "-pk", "id", "-id"}:
            ordering.append("pk")
        return ordering

    def filter_queryset(self, request: Any, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        return queryset.order_by(*self.get_ordering(request, queryset, view))


class FilterSet(django_filters.FilterSet):
    class Meta:
        # A related id filters by number: no lookup of the related row, so another clinic's
        # id answers an empty list exactly like an unknown one (no existence oracle).
        filter_overrides = {models.ForeignKey: {"filter_class": django_filters.NumberFilter}}


class PumpFilter(FilterSet):
    due_within = django_filters.NumberFilter(
        method="filter_due_within",
        min_value=0,
        max_value=3660,
        label="Active pumps whose refill-by date is within this many days (overdue ones included).",
    )
    overdue = django_filters.BooleanFilter(method="filter_overdue", label="Active pumps past their refill-by date.")
    past_alarm = django_filters.BooleanFilter(
        method="filter_past_alarm", label="Active pumps on or past their low-reservoir alarm date."
    )

    class Meta(FilterSet.Meta):
        model = Pump
        fields = ["phase", "model", "patient", "status"]

    def filter_due_within(self, qs: QuerySet[Pump], name: str, value: Any) -> QuerySet[Pump]:
        return qs.filter(by_local_today("refill_by", "lte", int(value)), status=PumpStatus.ACTIVE)

    def filter_overdue(self, qs: QuerySet[Pump], name: str, value: bool | None) -> QuerySet[Pump]:
        if value is None:
            return qs
        overdue = by_local_today("refill_by", "lt") & Q(status=PumpStatus.ACTIVE)
        return qs.filter(overdue) if value else qs.exclude(overdue)

    def filter_past_alarm(self, qs: QuerySet[Pump], name: str, value: bool | None) -> QuerySet[Pump]:
        if value is None:
            return qs
        past = by_local_today("alarm_on", "lte") & Q(status=PumpStatus.ACTIVE)
        return qs.filter(past) if value else qs.exclude(past)


class PatientFilter(FilterSet):
    class Meta(FilterSet.Meta):
        model = Patient
        fields = ["clinic", "mrn", "diagnosis", "spasticity_origin", "language"]


class ProgramFilter(FilterSet):
    effective_at = DateTimeRangeFilter()

    class Meta(FilterSet.Meta):
        model = Program
        fields = ["pump", "mode", "effective_at"]


class RefillFilter(FilterSet):
    performed_at = DateTimeRangeFilter(label="performed_at_after / performed_at_before: ISO 8601 times with an offset.")

    class Meta(FilterSet.Meta):
        model = Refill
        fields = ["pump", "performed_at", "discrepancy_flagged", "is_initial_fill"]


class ScreeningFilter(FilterSet):
    class Meta(FilterSet.Meta):
        model = ScreeningTrial
        fields = ["patient", "outcome"]


class EventFilter(FilterSet):
    occurred_at = DateTimeRangeFilter()

    class Meta(FilterSet.Meta):
        model = ClinicalEvent
        fields = ["pump", "kind", "occurred_at"]


class MessageFilter(FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=Status.choices, label="One or more states (repeat the parameter).")
    due_at = DateTimeRangeFilter()

    class Meta(FilterSet.Meta):
        model = Message
        fields = ["status", "kind", "channel", "recipient_kind", "critical", "patient", "pump", "due_at"]


class EscalationFilter(FilterSet):
    class Meta(FilterSet.Meta):
        model = Escalation
        fields = ["status", "severity", "reason", "patient", "pump"]


class AppointmentFilter(FilterSet):
    starts_at = DateTimeRangeFilter()

    class Meta(FilterSet.Meta):
        model = Appointment
        fields = ["pump", "status", "starts_at"]
