"""The admin's two-factor page: who is enrolled, and a superuser's reset for a lost phone."""

from __future__ import annotations

import contextlib
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.auth.models import User
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from twofactor import services
from twofactor.models import StaffTwoFactor

# django-otp's own device pages show each key and its QR code: whoever reads them could
# copy a colleague's authenticator. Devices are managed on /account/2fa/ and reset below.
for model in (TOTPDevice, StaticDevice):
    with contextlib.suppress(NotRegistered):
        admin.site.unregister(model)


@admin.register(StaffTwoFactor)
class StaffTwoFactorAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["username", "get_full_name", "is_active", "enrolled", "backup_codes_left"]
    list_filter = ["is_active", "is_superuser"]
    search_fields = ["username", "first_name", "last_name", "email"]
    ordering = ["username"]
    actions = ["reset_two_factor"]
    fields = ["username", "first_name", "last_name", "email"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[StaffTwoFactor]:
        return (
            super()
            .get_queryset(request)
            .filter(is_staff=True)
            .annotate(
                _enrolled=Exists(TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)),
                _codes=Count("staticdevice__token_set", filter=Q(staticdevice__confirmed=True)),
            )
        )

    @admin.display(boolean=True, description="two-factor on", ordering="_enrolled")
    def enrolled(self, obj: Any) -> bool:
        return bool(obj._enrolled)

    @admin.display(description="backup codes left", ordering="_codes")
    def backup_codes_left(self, obj: Any) -> int:
        return int(obj._codes)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_reset_permission(self, request: HttpRequest) -> bool:
        # Only a superuser: a reset lets the password alone sign that user in again.
        return bool(request.user.is_superuser)

    @admin.action(permissions=["reset"], description="Reset two-factor authentication (lost device)")
    def reset_two_factor(self, request: HttpRequest, queryset: QuerySet[StaffTwoFactor]) -> None:
        users = list(User.objects.filter(pk__in=queryset.values("pk")).order_by("username"))
        had = services.reset(users, by=request.user)
        names = ", ".join(u.get_username() for u in users)
        messages.success(
            request,
            f"Two-factor authentication reset for {names} ({had} had an app). They sign in with the password and enrol again.",
        )
