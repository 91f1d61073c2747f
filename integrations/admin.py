"""Calendar feeds in the admin: staff of a clinic issue, see and revoke its feeds' URLs."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from integrations import services
from integrations.models import CalendarFeed
from patients.audit_admin import AuditedAdminMixin
from patients.scoped_admin import ClinicScopedAdmin, apply_errors


class CalendarFeedForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = CalendarFeed
        fields = ["clinic", "patient", "label"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        clinic = cleaned.get("clinic")
        if self.instance.pk is None and clinic is not None:
            try:
                services.validate_feed(clinic=clinic, patient=cleaned.get("patient"), label=cleaned.get("label") or "")
            except ValidationError as exc:
                # A field the form already refused (an empty label) is not reported twice.
                apply_errors(self, ValidationError({k: v for k, v in exc.message_dict.items() if k not in self.errors}))
        return cleaned


@admin.register(CalendarFeed)
class CalendarFeedAdmin(AuditedAdminMixin, ClinicScopedAdmin):
    clinic_lookup = "clinic"
    form = CalendarFeedForm
    list_display = ["label", "clinic", "subscriber", "state", "created_at", "last_fetched_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), ("clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["label", "patient__mrn", "patient__family_name"]
    list_select_related = ["clinic", "patient"]
    actions = ["revoke", "rotate"]

    ADD_FIELDS = ["clinic", "patient", "label"]
    SHOWN_FIELDS = ["feed_url", "label", "clinic", "patient", "created_at", "created_by", "revoked_at", "last_fetched_at"]

    @admin.display(description="subscriber")
    def subscriber(self, obj: CalendarFeed) -> str:
        return str(obj.patient) if obj.patient_id else "Clinic staff (every active pump)"

    @admin.display(description="state")
    def state(self, obj: CalendarFeed) -> str:
        return f"revoked {timezone.localtime(obj.revoked_at):%Y-%m-%d %H:%M}" if obj.revoked_at else "active"

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.ADD_FIELDS if obj is None else [self._url_column(request), *self.SHOWN_FIELDS[1:]]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Only the label changes after creation: another clinic or patient is another feed.
        return [] if obj is None else [f for f in self.get_fields(request, obj) if f != "label"]

    def _url_column(self, request: HttpRequest) -> Any:
        """The address, for staff who may manage this clinic's feeds: it is a credential that
        outlives a membership, so a viewer sees that it exists, not its value.

        One callable per request (the admin compares fields and read-only fields by identity).
        """
        cached = getattr(request, "_feed_url_column", None)
        if cached is not None:
            return cached

        def feed_url(obj: CalendarFeed) -> SafeString | str:
            if not obj.is_revoked and not self.has_change_permission(request, obj):
                return "Shown to the staff who manage this clinic's feeds."
            return self.feed_url(obj)

        feed_url.short_description = "feed URL"  # type: ignore[attr-defined]
        request._feed_url_column = feed_url  # type: ignore[attr-defined]
        return feed_url

    @admin.display(description="feed URL")
    def feed_url(self, obj: CalendarFeed) -> SafeString | str:
        if obj.is_revoked:
            return "Revoked: this address answers 404."
        url = services.feed_url(obj)
        return format_html(
            '<code class="pt-feed-url">{}</code><div class="help">Subscribe to it in a calendar app. Anyone who has '
            "this address can read the calendar: share it only with its subscriber, and revoke it if it leaks.</div>",
            url,
        )

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        data = form.cleaned_data
        return services.issue_feed(
            clinic=data["clinic"], patient=data.get("patient"), label=data["label"], by=request.user, now=timezone.now()
        )

    def save_model(self, request: HttpRequest, obj: CalendarFeed, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:  # an add was saved whole by the service
            super().save_related(request, form, formsets, change)

    def response_add(self, request: HttpRequest, obj: CalendarFeed, post_url_continue: str | None = None) -> HttpResponse:
        # The address is what staff came for: say it at once, not one click away.
        self.message_user(request, f"Subscribe to {obj} at: {services.feed_url(obj)}", messages.SUCCESS)
        return super().response_add(request, obj, post_url_continue)

    # -- list actions

    def _writable(self, request: HttpRequest, queryset: QuerySet[CalendarFeed]) -> list[CalendarFeed]:
        active = queryset.filter(revoked_at=None).select_related("clinic", "patient")
        return [feed for feed in active if self.has_change_permission(request, feed)]

    @admin.action(description="Revoke selected feeds (their URLs stop at once)", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[CalendarFeed]) -> None:
        now = timezone.now()
        count = sum(services.revoke_feed(feed, now=now) for feed in self._writable(request, queryset))
        self.message_user(request, f"Revoked {count} feed(s).")

    @admin.action(description="Rotate selected feeds (revoke, and issue a new URL)", permissions=["change"])
    def rotate(self, request: HttpRequest, queryset: QuerySet[CalendarFeed]) -> None:
        now = timezone.now()
        for feed in self._writable(request, queryset):
            try:
                new = services.rotate_feed(feed, by=request.user, now=now)
            except ValidationError as exc:
                self.message_user(request, f"{feed}: {' '.join(exc.messages)}", messages.WARNING)
                continue
            self.message_user(request, f"{feed}: the old URL is revoked. New URL: {services.feed_url(new)}", messages.SUCCESS)
