"""Change history of clinical, contact and access records (issue 6, "Audit").

django-simple-history keeps one historical row per save: who (the request's user through
`HistoryRequestMiddleware`, none for Celery and other system work), when, the record's
values and why (`history_change_reason`). This module adds what the library leaves to us:

- `change_reason(text)`: a reason for every record saved inside the block (the admin's
  "Reason for change" field covers a patient and its caregiver inline in one save); a
  reason set on the instance (`_change_reason`, e.g. a dose change's own reason) wins.
- `record_update(...)`: history for rows changed with `QuerySet.update()`. Services keep
  their atomic claims (`filter(status=OPEN).update(...) == 1`, STYLE.md §7), which bypass
  `save()` and its signal; a human change made that way would escape the audit, so such a
  service writes the history explicitly after its update.

Machine recomputes (a pump's stored alarm and refill-by dates) go through `update()` and
are excluded from the historical models (`excluded_fields`): one row per planning sweep
per pump would bury the real changes under millions of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import models
from simple_history.models import HistoricalRecords

_reason: ContextVar[str] = ContextVar("pumptrack_change_reason", default="")


class AuditedHistory(HistoricalRecords):  # type: ignore[misc]  # the library is untyped
    """HistoricalRecords that also takes the reason from `change_reason()`."""

    def get_change_reason_for_object(self, instance: Any, history_type: str, using: Any) -> str | None:
        own = super().get_change_reason_for_object(instance, history_type, using)
        return own or _reason.get() or None


@contextmanager
def change_reason(text: str) -> Iterator[None]:
    """Records saved inside the block carry `text` as their change reason."""
    token = _reason.set(text.strip())
    try:
        yield
    finally:
        _reason.reset(token)


def current_reason() -> str:
    return _reason.get()


def attribute(instance: models.Model, by: Any) -> None:
    """The person a service acts for is the history's user, also outside a request
    (a management command, a test); without one the request's user (or none) applies."""
    if getattr(by, "pk", None) is not None:
        instance._history_user = by  # type: ignore[attr-defined]


def record_update(model: type[models.Model], pks: Iterable[Any], *, by: Any = None, reason: str = "") -> int:
    """Write a "changed" history row for each row in `pks` as it now is (after an update()).

    `by`: the person (None: the request's user, if any, else the system).
    """
    ids = list(pks)
    if not ids:
        return 0
    rows = list(model._default_manager.filter(pk__in=ids))
    manager: Any = model.history  # type: ignore[attr-defined]
    created = manager.bulk_history_create(
        rows, update=True, default_user=by if getattr(by, "pk", None) else None, default_change_reason=reason or current_reason()
    )
    return len(created or [])


def record_create(model: type[models.Model], rows: list[Any], *, reason: str = "") -> None:
    """Write "created" history rows for rows inserted with `bulk_create()`."""
    if rows:
        manager: Any = model.history  # type: ignore[attr-defined]
        manager.bulk_history_create(rows, default_change_reason=reason or current_reason())
