"""API tokens in the admin: a member creates tokens for themselves (a superuser for anyone);
the key is shown once, at creation, and only its digest is stored."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from api import services
from api.models import ApiToken
from patients.access import is_member
from patients.audit_admin import AuditedAdminMixin


class ApiTokenForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = ApiToken
        fields = ["user", "name", "read_only", "expires_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    form = ApiTokenForm
    list_display = ["name", "prefix", "user", "read_only", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["prefix", "created_at", "created_by", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        qs = super().get_queryset(request).select_related("user", "created_by")
        return qs if request.user.is_superuser else qs.filter(user=request.user)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return (
                ["user", "name", "read_only", "expires_at"] if request.user.is_superuser else ["name", "read_only", "expires_at"]
            )
        return ["user", "name", "prefix", "read_only", "expires_at", "created_at", "created_by", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        return ["user", "name", "prefix", "read_only", "expires_at", "created_at", "created_by", "last_used_at", "revoked_at"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_member(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_member(request.user) and (obj is None or request.user.is_superuser or obj.user_id == request.user.pk)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_member(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Nothing is edited after creation; the revoke action needs change permission.
        return obj is None and is_member(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoked tokens stay, so that their use can be traced

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        user = form.cleaned_data.get("user") if request.user.is_superuser else request.user
        token, key = services.issue_token(
            user=user,
            name=form.cleaned_data["name"],
            by=request.user,
            expires_at=form.cleaned_data.get("expires_at"),
            read_only=form.cleaned_data.get("read_only", False),
        )
        obj.pk, obj.user, obj.prefix = token.pk, token.user, token.prefix
        self.message_user(
            request,
            f"Token created for {token.user}. Copy the key now, it will not be shown again: {key}",
            messages.SUCCESS,
        )

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        now = timezone.now()
        count = sum(services.revoke_token(t, now=now) for t in queryset)
        self.message_user(request, f"Revoked {count} token(s).")
