"""Base classes for the REST faces: clinic-scoped querysets and writable relations.

Scoping lives in the queryset, so another clinic's object is simply not found (404) and
its id in a request body is "object does not exist" (400): neither reveals its data.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet
from rest_framework import serializers, viewsets

from patients.access import clinics_for, clinics_writable
from patients.models import Clinic


def walk(obj: Any, lookup: str) -> Any:
    for part in [p for p in lookup.split("__") if p]:
        obj = getattr(obj, part)
    return obj


class ClinicScopedMixin:
    """Set `clinic_lookup` (the path from the model to its clinic, "" for Clinic itself) and
    `write_label` ("app.model", the key of patients.access.WRITE_ROLES)."""

    clinic_lookup = ""
    write_label = ""
    request: Any

    def scope(self, qs: QuerySet[Any]) -> QuerySet[Any]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return qs.none()
        user = self.request.user
        if user.is_superuser:
            return qs
        field = f"{self.clinic_lookup}__in" if self.clinic_lookup else "pk__in"
        return qs.filter(**{field: clinics_for(user)})

    def get_queryset(self) -> QuerySet[Any]:
        return self.scope(super().get_queryset())  # type: ignore[misc]

    def clinic_of(self, obj: Model) -> Clinic:
        return walk(obj, self.clinic_lookup)  # type: ignore[no-any-return]


class ClinicScopedViewSet(ClinicScopedMixin, viewsets.GenericViewSet):  # type: ignore[type-arg]
    lookup_value_regex = "[0-9]+"


class WritableRelatedField(serializers.PrimaryKeyRelatedField):  # type: ignore[type-arg]
    """A related id limited to objects in clinics where the user may write the view's model.

    `clinic_lookup` is the path from the related model to its clinic ("" for Clinic).
    """

    def __init__(self, *, clinic_lookup: str, **kwargs: Any) -> None:
        self.clinic_lookup = clinic_lookup
        super().__init__(**kwargs)

    def get_queryset(self) -> QuerySet[Any]:
        qs = super().get_queryset()
        request = self.context.get("request")
        view = self.context.get("view")
        if request is None or view is None:
            return qs.none()
        clinics = clinics_writable(request.user, view.write_label)
        field = f"{self.clinic_lookup}__in" if self.clinic_lookup else "pk__in"
        return qs.filter(**{field: clinics})
