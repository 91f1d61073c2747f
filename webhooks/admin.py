"""Staff views of outbound webhooks (thin: `webhooks.services` does the work).

Endpoints are registered per clinic by clinicians and coordinators, who see the signing
secret so they can configure the receiver; deliveries are read-only records with every
attempt, and failed ones can be sent again. Everything is scoped to the user's clinics.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from patients.access import clinics_writable, is_member, may_write
from patients.audit_admin import AuditedAdminMixin
from patients.scoped_admin import ClinicScopedAdmin
from webhooks import services
from webhooks.models import (
    RETRYABLE_STATES,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    validate_webhook_url,
)

LABEL = "webhooks.webhookendpoint"


class EndpointForm(forms.ModelForm):  # type: ignore[type-arg]
    url = forms.URLField(label="URL", max_length=500, assume_scheme="https", validators=[validate_webhook_url])
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Tick none to receive every event type.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["clinic", "url", "description", "event_types"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(AuditedAdminMixin, ClinicScopedAdmin):
    clinic_lookup = "clinic"
    form = EndpointForm
    list_display = ["__str__", "clinic", "url", "event_list", "is_active", "consecutive_failures", "disabled_at"]
    list_filter = ["is_active", ("clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["url", "description"]
    actions = ["reenable", "rotate"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        if obj is None:
            return ["clinic", "url", "description", "event_types"]
        return ["clinic", "url", "description", "event_types", *self.get_readonly_fields(request, obj)[1:]]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        if obj is None:
            return []
        status = ["is_active", "disabled_at", "disabled_reason", "consecutive_failures", "deliveries_link"]
        return ["clinic", self._secret_column(request), *status, "created_at", "created_by"]

    @admin.display(description="events")
    def event_list(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types) or "all"

    def _secret_column(self, request: HttpRequest) -> Any:
        """The signing secret, for staff who may manage this clinic's endpoints (they
        configure the receiver with it); a viewer sees that it exists, not its value.

        One callable per request (the admin compares fields and read-only fields by identity).
        """
        cached = getattr(request, "_webhook_secret_column", None)
        if cached is not None:
            return cached

        def signing_secret(obj: WebhookEndpoint) -> SafeString:
            if not may_write(request.user, LABEL, obj.clinic):
                return format_html("<em>{}</em>", "Shown to the clinic's clinicians and coordinators.")
            previous = ""
            if obj.previous_secret and obj.previous_secret_expires_at and obj.previous_secret_expires_at > timezone.now():
                previous = f"; the previous secret also signs until {obj.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC"
            return format_html(
                '<code class="pt-secret">{}</code><br><span class="help">The receiver verifies the webhook-signature '
                "header with it (Standard Webhooks){}.</span>",
                obj.secret,
                previous,
            )

        signing_secret.short_description = "signing secret"  # type: ignore[attr-defined]
        request._webhook_secret_column = signing_secret  # type: ignore[attr-defined]
        return signing_secret

    @admin.display(description="deliveries")
    def deliveries_link(self, obj: WebhookEndpoint) -> SafeString:
        url = reverse("admin:webhooks_webhookdelivery_changelist") + f"?endpoint__id__exact={obj.pk}"
        return format_html('<a href="{}">{} deliveries</a>', url, obj.deliveries.count())

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool) -> None:
        # The form already ran the model's validators (http(s) only, known event types).
        data = form.cleaned_data
        if change:
            services.update_endpoint(
                obj, {name: data[name] for name in ("url", "description", "event_types")}, now=timezone.now()
            )
            return
        created = services.create_endpoint(
            clinic=data["clinic"],
            url=data["url"],
            description=data["description"],
            event_types=data["event_types"],
            by=request.user,
        )
        obj.pk, obj.secret, obj.created_at, obj.created_by = created.pk, created.secret, created.created_at, created.created_by
        self.message_user(request, "Endpoint registered: open it to copy its signing secret into the receiver.")

    def _writable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> QuerySet[WebhookEndpoint]:
        return queryset.filter(clinic__in=clinics_writable(request.user, LABEL))

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return may_write(request.user, LABEL)

    @admin.action(description="Re-enable selected endpoints", permissions=["manage"])
    def reenable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        count = sum(services.enable_endpoint(endpoint) for endpoint in self._writable(request, queryset))
        self.message_user(
            request, f"Re-enabled {count} endpoint(s). Retry their cancelled deliveries if the receiver needs them."
        )

    @admin.action(description="Rotate the signing secret of selected endpoints", permissions=["manage"])
    def rotate(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        chosen = list(self._writable(request, queryset))
        for endpoint in chosen:
            services.rotate_secret(endpoint, now=timezone.now())
        self.message_user(
            request,
            f"New secret for {len(chosen)} endpoint(s); the old one keeps signing alongside it for a while. "
            "Open each endpoint to copy the new secret into its receiver.",
            messages.WARNING,
        )


class AttemptInline(admin.TabularInline):  # type: ignore[type-arg]
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("started_at", "outcome", "status_code", "duration_ms", "error", "response_excerpt", "url", "worker")
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_member(request.user)  # the delivery itself is already scoped to the clinic

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ClinicScopedAdmin):
    """The webhook outbox, read-only: which event went to which endpoint, and every attempt."""

    clinic_lookup = "endpoint__clinic"
    list_display = [
        "created_at",
        "event_type",
        "event_id",
        "endpoint",
        "status",
        "attempt_count",
        "last_status_code",
        "next_attempt_at",
    ]
    list_filter = ["status", "event_type", ("endpoint", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["event_id"]
    list_select_related = ["endpoint"]
    inlines = [AttemptInline]
    actions = ["retry"]
    fields = (
        "endpoint",
        "event_type",
        "event_id",
        "status",
        "status_reason",
        "attempt_count",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "queued_at",
        "claimed_at",
        "claim_expires_at",
        "created_at",
        "body",
    )
    readonly_fields = fields

    @admin.display(description="payload")
    def body(self, obj: WebhookDelivery) -> SafeString:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', json.dumps(obj.payload, indent=2))

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the delivery log is the record of what integrators were sent

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return may_write(request.user, LABEL)

    @admin.action(description="Retry selected failed deliveries now", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        mine = queryset.filter(endpoint__clinic__in=clinics_writable(request.user, LABEL), status__in=RETRYABLE_STATES)
        ids = services.retry_now(mine.values_list("pk", flat=True), now=timezone.now())
        skipped = queryset.count() - len(ids)
        self.message_user(request, f"Queued {len(ids)} deliver(ies) again.")
        if skipped:
            self.message_user(
                request,
                f"{skipped} not retried: only failed or cancelled deliveries of active endpoints in your clinics can be.",
                messages.WARNING,
            )
