"""The second factor at the API's password endpoint (POST /api/v1/tokens/ with HTTP Basic).

A token minted with the password alone would walk around two-factor authentication, so a
user with a device must send a current code in the body's `otp` field, and with
PUMPTRACK_REQUIRE_2FA staff without a device get no token that way at all. A wrong code
counts as a failed login for django-axes, like a wrong password.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request

from twofactor import services

OTP_HELP = (
    "With HTTP Basic, for users with two-factor authentication: the six-digit code from the "
    "authenticator app, or a backup code. Ignored when signed in with a session."
)


def check_password_request(request: Request, code: str) -> None:
    """Raise a field error on `otp` unless this password-authenticated request carries the
    second factor its user needs."""
    user = request.user
    if not services.has_device(user):
        if settings.PUMPTRACK_REQUIRE_2FA and user.is_staff:
            raise PermissionDenied(
                {"otp": ["Two-factor authentication is required: set up an authenticator app at /account/2fa/ first."]}
            )
        return
    if not code.strip():
        raise ValidationError({"otp": ["This account uses two-factor authentication: send the code from your app."]})
    if services.verify(user, code) is None:
        user_login_failed.send(sender=__name__, credentials={"username": user.get_username()}, request=request._request)
        raise ValidationError({"otp": ["That code is not right (or was already used)."]})
