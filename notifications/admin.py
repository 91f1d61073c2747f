"""Staff views of the outbox, escalations and contact blocks (thin: services do the work)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.http import HttpRequest
from django.utils import timezone

from notifications import services
from notifications.models import Attempt, ContactBlock, Escalation, EscalationStatus, Message, Severity
from patients.scoped_admin import ClinicScopedAdmin


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ["started_at", "finished_at", "outcome", "error", "provider_id", "worker"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ClinicScopedAdmin):
    clinic_lookup = "clinic"
    list_display = ["due_at", "kind", "stage", "recipient_kind", "channel", "address", "status", "critical", "patient"]
    list_filter = ["status", "kind", "channel", "recipient_kind", "critical"]
    search_fields = ["address", "patient__mrn", "patient__family_name", "provider_id"]
    date_hierarchy = "due_at"
    list_select_related = ["patient"]
    inlines = [AttemptInline]
    readonly_fields = [f.name for f in Message._meta.fields]
    fieldsets = [
        (None, {"fields": ["clinic", "patient", "pump", "caregiver", "kind", "stage", "cycle", "critical"]}),
        ("Recipient", {"fields": ["recipient_kind", "recipient_key", "channel", "address", "language", "time_zone"]}),
        (
            "Delivery",
            {
                "fields": [
                    "status",
                    "status_reason",
                    "due_at",
                    "queued_at",
                    "claimed_at",
                    "claim_expires_at",
                    "attempt_count",
                    "next_attempt_at",
                    "sent_at",
                    "delivered_at",
                    "provider_id",
                ]
            },
        ),
        ("As sent", {"fields": ["rendered_subject", "rendered_body", "context"]}),
    ]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


SEVERITY_ORDER = Case(
    When(severity=Severity.CRITICAL, then=Value(0)),
    When(severity=Severity.WARNING, then=Value(1)),
    default=Value(2),
    output_field=IntegerField(),
)


@admin.register(Escalation)
class EscalationAdmin(ClinicScopedAdmin):
    clinic_lookup = "clinic"
    list_display = ["raised_at", "severity", "reason", "status", "patient", "pump", "detail"]
    list_filter = ["status", "severity", "reason"]
    search_fields = ["patient__mrn", "patient__family_name", "detail"]
    list_select_related = ["patient", "pump__model"]
    actions = ["acknowledge", "resolve"]
    readonly_fields = [f.name for f in Escalation._meta.fields if f.name != "resolution"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Escalation]:
        # Newest critical first: open before handled, then severity, then time.
        status_order = Case(When(status=EscalationStatus.OPEN, then=Value(0)), default=Value(1), output_field=IntegerField())
        return (
            super()
            .get_queryset(request)
            .annotate(_open=status_order, _sev=SEVERITY_ORDER)
            .order_by("_open", "_sev", "-raised_at")
        )

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    @admin.action(description="Acknowledge selected escalations")
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Escalation]) -> None:
        for esc in queryset:
            if self.has_change_permission(request, esc):
                services.acknowledge_escalation(esc, by=request.user, now=timezone.now())
        self.message_user(request, "Acknowledged.")

    @admin.action(description="Resolve selected escalations")
    def resolve(self, request: HttpRequest, queryset: QuerySet[Escalation]) -> None:
        for esc in queryset:
            if self.has_change_permission(request, esc):
                services.resolve_escalation(esc, by=request.user, now=timezone.now(), resolution="Resolved by staff.")
        self.message_user(request, "Resolved.")


@admin.register(ContactBlock)
class ContactBlockAdmin(admin.ModelAdmin):
    list_display = ["created_at", "channel", "address", "reason", "method", "keyword", "lifted_at"]
    list_filter = ["channel", "reason", "method"]
    search_fields = ["address"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_staff)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
