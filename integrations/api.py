"""Calendar feeds over the REST API (`/api/v1/calendar-feeds/`): a scheduling system or a
patient portal gets a feed's signed address without a person copying it from the admin."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.permissions import read_only_token
from api.serializers import ModelSerializer
from api.viewsets import ClinicScopedViewSet, WritableRelatedField
from integrations import services
from integrations.models import CalendarFeed
from patients.access import clinics_writable
from patients.models import Clinic, Patient


class CalendarFeedSerializer(ModelSerializer):
    clinic = WritableRelatedField(clinic_lookup="", queryset=Clinic.objects.all())
    patient = WritableRelatedField(
        clinic_lookup="clinic",
        queryset=Patient.objects.all(),
        required=False,
        allow_null=True,
        help_text="Leave out (or null) for the clinic's staff feed of every active pump.",
    )
    url = serializers.SerializerMethodField(
        help_text="The signed address to subscribe to; null once revoked, and for users (or read-only tokens) "
        "who may not manage this clinic's feeds."
    )

    class Meta:
        model = CalendarFeed
        fields = ["id", "clinic", "patient", "label", "url", "created_at", "revoked_at", "last_fetched_at"]
        read_only_fields = ["created_at", "revoked_at", "last_fetched_at"]

    def get_url(self, feed: CalendarFeed) -> str | None:
        # The address is a credential that outlives a membership: only for those who may revoke it.
        if feed.revoked_at or feed.clinic_id not in self.context.get("managed_clinics", ()):
            return None
        return services.feed_url(feed)


class CalendarFeedViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, ClinicScopedViewSet):
    """iCalendar feeds of refill-by dates: a clinic's (staff) or one patient's. Revoking ends
    the address at once; rotating revokes it and answers a new one for the same subscriber."""

    queryset = CalendarFeed.objects.select_related("clinic", "patient")
    serializer_class = CalendarFeedSerializer
    clinic_lookup = "clinic"
    write_label = "integrations.calendarfeed"
    filterset_fields = ["clinic", "patient"]
    ordering_fields = ["created_at", "id"]

    def get_serializer_context(self) -> dict[str, Any]:
        context: dict[str, Any] = super().get_serializer_context()
        # One query per request: the clinics whose feed addresses this user (not a read-only token) may see.
        user = self.request.user
        writable = clinics_writable(user, self.write_label) if user.is_authenticated else Clinic.objects.none()
        context["managed_clinics"] = set() if read_only_token(self.request) else set(writable.values_list("pk", flat=True))
        return context

    def perform_create(self, serializer: CalendarFeedSerializer) -> None:
        v = serializer.validated_data
        serializer.instance = services.issue_feed(
            clinic=v["clinic"], patient=v.get("patient"), label=v["label"], by=self.request.user, now=timezone.now()
        )

    @extend_schema(request=None, responses={200: CalendarFeedSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        feed = self.get_object()
        services.revoke_feed(feed, now=timezone.now())
        return Response(self.get_serializer(feed).data)

    @extend_schema(request=None, responses={201: CalendarFeedSerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        feed = self.get_object()
        new = services.rotate_feed(feed, by=request.user, now=timezone.now())
        return Response(self.get_serializer(new).data, status=status.HTTP_201_CREATED)
