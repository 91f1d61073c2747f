"""Enrol, verify, renew and remove a staff user's second factor.

A user's second factor is one confirmed TOTP device (an authenticator app) plus one static
device holding single-use backup codes. django-otp owns the arithmetic (RFC 6238 with one
step of tolerance either side), replay protection (a code is accepted once: `last_t`) and
per-device throttling (after n wrong codes the device refuses for 2^(n-1) s, whoever asks),
which bounds guessing even when a correct password resets django-axes' count.
"""

from __future__ import annotations

import re
from base64 import b32encode
from collections.abc import Iterable
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

BACKUP_CODE_COUNT = 10
APP_DEVICE_NAME = "Authenticator app"
BACKUP_DEVICE_NAME = "Backup codes"
# An authenticator app shows six digits; a backup code is eight base32 letters and digits
# (django-otp's StaticToken.random_token). The form decides which device checks a code, so
# a wrong app code never counts against the backup codes' throttle, or the reverse.
_APP_CODE = re.compile(r"^[0-9]{6}$")


def normalise(code: str) -> str:
    """What people type, as stored: spaces and dashes dropped, lower case."""
    return re.sub(r"[\s-]", "", code).lower()


def has_device(user: Any) -> bool:
    """Whether the user has a confirmed authenticator app (and so must give a code at login)."""
    if not user.is_authenticated:
        return False
    return bool(TOTPDevice.objects.filter(user=user, confirmed=True).exists())


def is_verified(user: Any) -> bool:
    """Whether this session gave a code (django-otp's OTPMiddleware records it per request)."""
    check = getattr(user, "is_verified", None)
    return bool(check and check())


def start_enrolment(user: Any) -> TOTPDevice:
    """The unconfirmed device whose secret the enrolment page shows (the same one on reload,
    so a QR code already scanned stays valid until it is confirmed)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=APP_DEVICE_NAME, confirmed=False)
    return device


def b32_secret(device: TOTPDevice) -> str:
    """The key as authenticator apps take it when typed in (base32, no padding)."""
    return b32encode(device.bin_key).decode().rstrip("=")


@transaction.atomic
def confirm_enrolment(user: Any, code: str) -> tuple[TOTPDevice, list[str]] | None:
    """Confirm the pending device with a code from the app: it becomes the user's second
    factor (replacing any earlier one) and a fresh set of backup codes is made. None when
    the code is wrong (or the device is throttled after wrong codes)."""
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).order_by("-pk").first()
    if device is None or not device.verify_token(normalise(code)):
        return None
    TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    return device, new_backup_codes(user)


@transaction.atomic
def new_backup_codes(user: Any) -> list[str]:
    """Replace the user's backup codes with a fresh set; the old ones stop working."""
    device, _ = StaticDevice.objects.get_or_create(user=user, name=BACKUP_DEVICE_NAME, defaults={"confirmed": True})
    device.token_set.all().delete()
    codes = [StaticToken.random_token() for _ in range(BACKUP_CODE_COUNT)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    return codes


def backup_codes(user: Any) -> list[str]:
    """The user's unused backup codes (each works once)."""
    return list(
        StaticToken.objects.filter(device__user=user, device__confirmed=True).order_by("pk").values_list("token", flat=True)
    )


@transaction.atomic
def verify(user: Any, code: str) -> Device | None:
    """The device that accepts `code` for `user` (the app for six digits, else the backup
    codes; a backup code is used up), or None. Locked rows: two requests cannot both use
    the same backup code or the same app code."""
    code = normalise(code)
    if not code:
        return None
    model: type[TOTPDevice] | type[StaticDevice] = TOTPDevice if _APP_CODE.match(code) else StaticDevice
    device = model.objects.select_for_update().filter(user=user, confirmed=True).first()
    if device is None or not device.verify_token(code):
        return None
    return device


@transaction.atomic
def remove_devices(user: Any) -> None:
    """Forget the user's authenticator app and backup codes (they log in with the password
    alone until they enrol again, or are sent to enrol when two-factor is required)."""
    TOTPDevice.objects.filter(user=user).delete()
    StaticDevice.objects.filter(user=user).delete()


@transaction.atomic
def reset(users: Iterable[Any], *, by: Any) -> int:
    """An administrator's reset (a lost phone): each user's app and backup codes are removed
    and the admin log records who did it, on the user's own history. Returns how many had one."""
    had = 0
    for user in users:
        had += TOTPDevice.objects.filter(user=user, confirmed=True).exists()
        remove_devices(user)
        LogEntry.objects.create(
            user_id=by.pk,
            content_type_id=ContentType.objects.get_for_model(user, for_concrete_model=True).pk,
            object_id=str(user.pk),
            object_repr=str(user)[:200],
            action_flag=CHANGE,
            change_message="Reset two-factor authentication (lost device): authenticator app and backup codes removed.",
        )
    return had
