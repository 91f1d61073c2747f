"""REST faces for outbound webhooks: endpoints (`webhook-endpoints`) and the delivery log
(`webhook-deliveries`). Serializers shape fields; writes go through `webhooks.services`;
querysets are scoped to the user's clinics, so another clinic's endpoint answers 404.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.filters import FilterSet
from api.permissions import read_only_token
from api.viewsets import ClinicScopedMixin, WritableRelatedField
from patients.access import clinics_writable
from patients.models import Clinic
from webhooks import services
from webhooks.models import EventType, WebhookAttempt, WebhookDelivery, WebhookEndpoint

LABEL = "webhooks.webhookendpoint"


class WebhookEndpointSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    clinic = WritableRelatedField(clinic_lookup="", queryset=Clinic.objects.all(), help_text="Fixed once registered.")
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        required=False,
        help_text="Event types to receive; empty or left out: all.",
    )
    is_active = serializers.BooleanField(
        required=False, help_text="False stops deliveries (pending ones are cancelled); true re-enables."
    )
    secret = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="Standard Webhooks signing secret (whsec_...); null for users who may not manage this clinic's endpoints.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "clinic",
            "url",
            "description",
            "event_types",
            "secret",
            "is_active",
            "disabled_at",
            "disabled_reason",
            "consecutive_failures",
            "created_at",
        ]
        read_only_fields = ["disabled_at", "disabled_reason", "consecutive_failures", "created_at"]

    def validate_clinic(self, clinic: Clinic) -> Clinic:
        if self.instance is not None and clinic.pk != self.instance.clinic_id:
            raise serializers.ValidationError("An endpoint stays with the clinic it was registered for.")
        return clinic

    def to_representation(self, instance: WebhookEndpoint) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        if instance.clinic_id not in self.context.get("managed_clinics", ()):
            data["secret"] = None
        return data


class WebhookAttemptSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = WebhookAttempt
        fields = [
            "id",
            "started_at",
            "finished_at",
            "outcome",
            "url",
            "request_headers",
            "status_code",
            "response_excerpt",
            "error",
            "duration_ms",
        ]


class WebhookDeliverySerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    attempts = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "endpoint",
            "event_id",
            "event_type",
            "payload",
            "status",
            "status_reason",
            "attempt_count",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "delivered_at",
            "created_at",
            "attempts",
        ]
        read_only_fields = fields


class EndpointFilter(FilterSet):
    class Meta(FilterSet.Meta):
        model = WebhookEndpoint
        fields = ["clinic", "is_active"]


class DeliveryFilter(FilterSet):
    class Meta(FilterSet.Meta):
        model = WebhookDelivery
        fields = ["endpoint", "status", "event_type"]


class WebhookEndpointViewSet(
    ClinicScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    """Where a clinic's events are POSTed, signed as in the Standard Webhooks specification
    (`webhook-id`, `webhook-timestamp`, `webhook-signature`). Events: `refill.recorded`,
    `dose.changed`, `refill.overdue`, `escalation.raised`. Clinicians and coordinators
    register them; an endpoint is disabled after repeated permanent failures or a 410 Gone."""

    queryset = WebhookEndpoint.objects.all()
    serializer_class = WebhookEndpointSerializer
    clinic_lookup = "clinic"
    write_label = LABEL
    filterset_class = EndpointFilter
    ordering_fields = ["id", "created_at"]

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        # One query per request, not per endpoint: the clinics whose secrets this user may see.
        # A read-only token never gets one: a secret lets its holder sign (forge) events.
        managed = (
            set()
            if read_only_token(self.request)
            else set(clinics_writable(self.request.user, LABEL).values_list("pk", flat=True))
        )
        context["managed_clinics"] = managed
        return context

    def perform_create(self, serializer: WebhookEndpointSerializer) -> None:  # type: ignore[override]
        v = serializer.validated_data
        endpoint = services.create_endpoint(
            clinic=v["clinic"],
            url=v["url"],
            description=v.get("description", ""),
            event_types=v.get("event_types", []),
            by=self.request.user,
        )
        if v.get("is_active") is False:
            services.disable_endpoint(endpoint, "Registered disabled.", now=timezone.now())
            endpoint.refresh_from_db()
        serializer.instance = endpoint

    def perform_update(self, serializer: WebhookEndpointSerializer) -> None:  # type: ignore[override]
        changes = {k: v for k, v in serializer.validated_data.items() if k != "clinic"}
        serializer.instance = services.update_endpoint(serializer.instance, changes, now=timezone.now())

    def perform_destroy(self, instance: WebhookEndpoint) -> None:
        services.delete_endpoint(instance)

    @extend_schema(request=None, responses={200: WebhookEndpointSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        """A new signing secret; the old one keeps signing alongside it for the grace period."""
        endpoint = services.rotate_secret(self.get_object(), now=timezone.now())
        return Response(self.get_serializer(endpoint).data)


class WebhookDeliveryViewSet(ClinicScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):  # type: ignore[type-arg]
    """The delivery log: one row per (endpoint, event), with every attempt. `event_id` is the
    `webhook-id` header, the same on each retry."""

    queryset = WebhookDelivery.objects.prefetch_related("attempts")
    serializer_class = WebhookDeliverySerializer
    clinic_lookup = "endpoint__clinic"
    write_label = LABEL  # for "retry"; the log itself is read-only
    filterset_class = DeliveryFilter
    ordering_fields = ["id", "created_at", "next_attempt_at"]

    @extend_schema(request=None, responses={200: WebhookDeliverySerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Send a failed or cancelled delivery again now, with a fresh retry schedule."""
        delivery = self.get_object()
        if not services.retry_now([delivery.pk], now=timezone.now()):
            raise serializers.ValidationError(
                {"status": ["Only a failed or cancelled delivery of an active endpoint can be retried."]}
            )
        return Response(self.get_serializer(self.get_queryset().get(pk=delivery.pk)).data)
