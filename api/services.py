"""Issuing and revoking API tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from api.models import ApiToken, digest, generate_key
from patients.history import record_update


def issue_token(
    *, user: Any, name: str, by: Any, expires_at: datetime | None = None, read_only: bool = False
) -> tuple[ApiToken, str]:
    """Create a token and return it with its key: the key is not stored and cannot be shown again."""
    key = generate_key()
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=key[:10],
        key_digest=digest(key),
        created_by=by,
        expires_at=expires_at,
        read_only=read_only,
    )
    return token, key


def revoke_token(token: ApiToken, *, now: datetime) -> bool:
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at=None).update(revoked_at=now) == 1
    if revoked:  # access taken away: the audit shows who and when
        record_update(ApiToken, [token.pk])
    return revoked
