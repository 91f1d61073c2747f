"""Field types for the API: times that are unambiguous and storable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.utils import timezone
from django_filters.fields import IsoDateTimeField, RangeField
from django_filters.widgets import DateRangeWidget
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

# Real zones lie within UTC−12 … UTC+14; PostgreSQL refuses offsets beyond ±15:59.
MAX_OFFSET = timedelta(hours=14)
# Clinical records (and queries about them) fall in these years; outside is a typing error.
YEARS = range(1900, 2201)


def storable_problem(value: datetime) -> str | None:
    """Why an aware datetime cannot be stored as a clinical time, or None."""
    offset = value.utcoffset()
    if offset is not None and abs(offset) > MAX_OFFSET:
        return "The UTC offset must lie between -12:00 and +14:00."
    try:
        year = value.astimezone(UTC).year
    except OverflowError:
        year = 0
    if year not in YEARS:
        return f"The year must lie between {YEARS.start} and {YEARS.stop - 1}."
    return None


class AwareDateTimeField(serializers.DateTimeField):
    default_error_messages = {
        "naive": "Include a UTC offset, e.g. 2027-02-01T09:00:00Z or 2027-02-01T10:00:00+01:00.",
    }

    def enforce_timezone(self, value: datetime) -> datetime:
        if timezone.is_naive(value):
            self.fail("naive")
        problem = storable_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return super().enforce_timezone(value)


@extend_schema_field({"type": "string", "pattern": r"^\d{2}:\d{2}(:\d{2})?$", "example": "10:00"})
class LocalTimeField(serializers.TimeField):
    """A wall-clock time (HH:MM[:SS]) in the clinic's or recipient's zone, not an instant."""


class StorableIsoDateTimeField(IsoDateTimeField):
    def to_python(self, value: Any) -> datetime | None:
        result: datetime | None = super().to_python(value)
        if result is not None:
            problem = storable_problem(result)
            if problem:
                raise forms.ValidationError(problem)
        return result


class StorableIsoDateTimeRangeField(RangeField):
    widget = DateRangeWidget

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__((StorableIsoDateTimeField(), StorableIsoDateTimeField()), *args, **kwargs)
