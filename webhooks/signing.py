"""Standard Webhooks signatures (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md).

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the key is the secret's
base64 part, decoded; the header is `v1,<base64 HMAC-SHA256>`, several separated by
spaces (a secret being rotated). The tests check this against the independent
`standardwebhooks` library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 (the spec's prefix, not a secret)
# The spec asks for 24 to 64 random bytes.
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret in force."""
    return " ".join(signature(s, msg_id, timestamp, body) for s in secrets_)
