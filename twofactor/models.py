from __future__ import annotations

from django.contrib.auth.models import User


class StaffTwoFactor(User):
    """Staff users as the admin's two-factor page lists them (a proxy: no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "staff two-factor status"
        verbose_name_plural = "staff two-factor status"
