"""Typed readers for environment variables that fail loudly on a bad value.

A typo in production configuration must stop start-up with the variable's name, not
silently fall back to a default (healthchecks' `hc/lib/env.py` does the same).
"""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    """The variable's value, or the contents of the file named by NAME_FILE (secrets)."""
    value = os.environ.get(name)
    if value is not None:
        return value
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    return None


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None else value


def env_bool(name: str, default: bool = False) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value.strip() == "":
        result = default
    else:
        try:
            result = int(value.strip())
        except ValueError:
            raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None
    if minimum is not None and result < minimum:
        raise ImproperlyConfigured(f"{name}={result} is below the minimum {minimum}")
    if maximum is not None and result > maximum:
        raise ImproperlyConfigured(f"{name}={result} is above the maximum {maximum}")
    return result


def env_decimal(name: str, default: str, *, minimum: Decimal | None = None) -> Decimal:
    value = _raw(name)
    text = default if value is None or value.strip() == "" else value.strip()
    try:
        result = Decimal(text)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name}={text!r} is not a number") from None
    if not result.is_finite():
        raise ImproperlyConfigured(f"{name}={text!r} is not a finite number")
    if minimum is not None and result < minimum:
        raise ImproperlyConfigured(f"{name}={result} is below the minimum {minimum}")
    return result


def env_list(name: str, default: str = "") -> list[str]:
    value = _raw(name)
    text = default if value is None else value
    return [item.strip() for item in text.split(",") if item.strip()]


def env_decimal_list(name: str, default: str) -> tuple[Decimal, ...]:
    items = env_list(name, default)
    try:
        values = tuple(Decimal(item) for item in items)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name}={items!r} must be a comma-separated list of numbers") from None
    if not values or any(not v.is_finite() or v <= 0 for v in values):
        raise ImproperlyConfigured(f"{name}={items!r} must list positive numbers")
    return values
