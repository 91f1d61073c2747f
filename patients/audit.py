"""Reading the audit trail: one record's changes for the admin's History page, and every
change to one patient's records over a date range for the export (issue 6, "Audit").

The history rows are django-simple-history's (see `patients/history.py`); this module
turns them into entries an auditor reads: when (UTC and the clinic's wall clock), who
("system" for Celery and other unattended work), what (record type and id; created,
changed or deleted; each field's label with its value before and after, choices by their
labels) and why (the change reason). A new dose programming is a new row, so its "before"
is the pump's previous programming: the entry shows the previous dose, mode and
concentration beside the new ones, and the warnings the clinician acknowledged.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.text import capfirst

from notifications.models import ContactBlock, Escalation
from patients.models import Caregiver, Patient
from pumps.models import Appointment, Catheter, CatheterRevision, ClinicalEvent, Program, Pump, Refill, ScreeningTrial
from pumptrack import spreadsheet
from workspace.models import OutreachAttempt

SYSTEM = "system"
UTC_ZONE = ZoneInfo("UTC")
ACTIONS = {"+": "created", "~": "changed", "-": "deleted"}
CSV_COLUMNS = ["when_utc", "when_local", "who", "record_type", "record_id", "action", "field", "before", "after", "reason"]
# What a dose is, for "before" of a new programming row (the previous programming's values).
DOSE_FIELDS = ("dose_mcg_per_day", "mode", "concentration_mcg_per_ml")
# The longest range one export covers: a year of a busy patient's records stays small, and a
# mistyped year (2207) is refused rather than scanned.
MAX_RANGE_DAYS = 3660


@dataclass(frozen=True)
class FieldChange:
    field: str
    label: str
    before: str
    after: str


@dataclass(frozen=True)
class Entry:
    history_id: int
    at: datetime  # aware, UTC
    local_at: datetime  # the same moment on the clinic's wall clock
    who: str
    record_type: str
    record_id: int
    action: str
    reason: str
    changes: tuple[FieldChange, ...]


class _Names:
    """str() of related records and user names, each looked up once per export."""

    def __init__(self) -> None:
        self._cache: dict[tuple[type[models.Model], Any], str] = {}

    def of(self, model: type[models.Model], pk: Any) -> str:
        key = (model, pk)
        if key not in self._cache:
            found = model._default_manager.filter(pk=pk).first()
            if found is None:
                text = f"{capfirst(model._meta.verbose_name)} #{pk} (deleted)"
            elif model is get_user_model():
                text = str(getattr(found, get_user_model().USERNAME_FIELD))
            else:
                text = f"{found} (#{pk})"
            self._cache[key] = text
        return self._cache[key]

    def user(self, pk: Any) -> str:
        return SYSTEM if pk is None else self.of(get_user_model(), pk)


def _text(field: models.Field[Any, Any], value: Any, tz: ZoneInfo, names: _Names) -> str:
    """A stored value as a person reads it (choice labels, related names, local times)."""
    if value is None or value == "" or value == []:
        return ""
    if field.choices:
        return str(dict(field.flatchoices).get(value, value))
    if isinstance(field, models.ForeignKey):
        return names.of(field.related_model, value)  # type: ignore[arg-type]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return f"{value.normalize():f}"
    if isinstance(value, datetime):
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return ", ".join(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _fields(history_model: Any) -> list[models.Field[Any, Any]]:
    # The tracked fields, in model order; the primary key is the record id column.
    return [f for f in history_model.tracked_fields if not f.primary_key]


def _previous_program(row: Any) -> Any:
    """The programming in force before `row`'s (as first recorded), if any."""
    return (
        Program.history.filter(pump_id=row.pump_id, history_type="+", effective_at__lt=row.effective_at)
        .order_by("-effective_at", "-history_id")
        .first()
    )


def _changes(previous: Any, row: Any, fields: Sequence[models.Field[Any, Any]], tz: ZoneInfo, names: _Names) -> list[FieldChange]:
    out = []
    before_program = _previous_program(row) if row.history_type == "+" and row.instance_type is Program else None
    for field in fields:
        new = getattr(row, field.attname)
        if row.history_type == "-":
            break  # a deletion lists no fields: the row before it shows what was there
        if previous is not None:
            old = getattr(previous, field.attname)
            if old == new:
                continue
        else:
            old = getattr(before_program, field.attname) if before_program and field.name in DOSE_FIELDS else None
            if new in (None, "", []) and old in (None, "", []):
                continue  # a creation lists what was entered
        out.append(
            FieldChange(field.name, capfirst(str(field.verbose_name)), _text(field, old, tz, names), _text(field, new, tz, names))
        )
    return out


def entries(rows: Iterable[Any], tz: ZoneInfo, *, names: _Names | None = None, since: datetime | None = None) -> list[Entry]:
    """Entries for history rows of one model, oldest first; each diffed against the row
    before it of the same record. Rows before `since` serve only as the "before"."""
    names = names or _Names()
    ordered = sorted(rows, key=lambda r: (r.history_date, r.history_id))
    out: list[Entry] = []
    last: dict[Any, Any] = {}
    for row in ordered:
        pk = row.instance_type._meta.pk.attname
        record_id = getattr(row, pk)
        previous = last.get(record_id)
        last[record_id] = row
        if since is not None and row.history_date < since:
            continue
        fields = _fields(type(row))
        at = row.history_date.astimezone(UTC)
        out.append(
            Entry(
                history_id=row.history_id,
                at=at,
                local_at=at.astimezone(tz),
                who=names.user(row.history_user_id),
                record_type=capfirst(str(row.instance_type._meta.verbose_name)),
                record_id=record_id,
                action=ACTIONS.get(row.history_type, row.history_type),
                reason=row.history_change_reason or "",
                changes=tuple(_changes(previous, row, fields, tz, names)),
            )
        )
    return out


def record_entries(obj: models.Model, tz: ZoneInfo, related: Sequence[Any] = ()) -> list[Entry]:
    """Every change to one record, newest first (the admin's History page), with the
    changes of `related` history querysets (rows edited inline on its page, e.g. caregivers)."""
    history: Any = getattr(type(obj), "history")  # noqa: B009 (added by django-simple-history)
    names = _Names()
    found = entries(history.filter(**{type(obj)._meta.pk.attname: obj.pk}).order_by(), tz, names=names)
    for rows in related:
        found.extend(entries(rows.order_by(), tz, names=names))
    found.sort(key=lambda e: (e.at, e.history_id), reverse=True)
    return found


# ----------------------------------------------------------------------------- one patient's export


def parse_range(start: str | None, end: str | None) -> tuple[date, date]:
    """The export's dates (YYYY-MM-DD, both days included); errors name the field."""
    errors: dict[str, list[str]] = {}
    parsed: dict[str, date] = {}
    for name, text in (("from", start), ("to", end)):
        try:
            parsed[name] = date.fromisoformat((text or "").strip())
        except ValueError:
            errors[name] = [f"Enter a date as YYYY-MM-DD (got {text!r})." if text else "Enter a date as YYYY-MM-DD."]
    if not errors and parsed["from"] > parsed["to"]:
        errors["to"] = ["Must be on or after the 'from' date."]
    if not errors and (parsed["to"] - parsed["from"]).days > MAX_RANGE_DAYS:
        errors["to"] = [f"A range of at most {MAX_RANGE_DAYS} days, please."]
    if errors:
        raise ValidationError(errors)
    return parsed["from"], parsed["to"]


def _bounds(start: date, end: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Both days included, on the clinic's wall clock (a DST day is 23 or 25 hours)."""
    return datetime.combine(start, time.min, tz), datetime.combine(end + timedelta(days=1), time.min, tz)


def _addresses(patient: Patient) -> set[str]:
    """Every email address and phone number the patient or a caregiver ever had on record."""
    found: set[str] = set()
    for history in (
        Patient.history.filter(id=patient.pk),
        Caregiver.history.filter(patient_id=patient.pk),
    ):
        for email, phone in history.values_list("email", "phone"):
            found.update(str(v) for v in (email, phone) if v)
    found.update(str(v) for v in (patient.email, patient.phone) if v)
    for email, phone in patient.caregivers.values_list("email", "phone"):
        found.update(str(v) for v in (email, phone) if v)
    return found


def _patient_histories(patient: Patient) -> list[Any]:
    """The history querysets of everything that is this patient's, deleted records included."""
    pid = patient.pk
    pump_ids = set(Pump.history.filter(patient_id=pid).values_list("id", flat=True))
    catheter_ids = set(Catheter.history.filter(pump_id__in=pump_ids).values_list("id", flat=True))
    h = "history"
    return [
        getattr(Patient, h).filter(id=pid),
        getattr(Caregiver, h).filter(patient_id=pid),
        getattr(ContactBlock, h).filter(address__in=_addresses(patient)),
        getattr(Pump, h).filter(patient_id=pid),
        getattr(Catheter, h).filter(pump_id__in=pump_ids),
        getattr(CatheterRevision, h).filter(catheter_id__in=catheter_ids),
        getattr(ScreeningTrial, h).filter(patient_id=pid),
        getattr(Program, h).filter(pump_id__in=pump_ids),
        getattr(Refill, h).filter(pump_id__in=pump_ids),
        getattr(ClinicalEvent, h).filter(pump_id__in=pump_ids),
        getattr(Appointment, h).filter(pump_id__in=pump_ids),
        getattr(Escalation, h).filter(models.Q(patient_id=pid) | models.Q(pump_id__in=pump_ids)),
        getattr(OutreachAttempt, h).filter(patient_id=pid),
    ]


def patient_entries(patient: Patient, start: date, end: date) -> list[Entry]:
    """Every change to the patient's records from `start` to `end` (clinic days, inclusive), in time order."""
    tz = patient.clinic.tz
    since, until = _bounds(start, end, tz)
    names = _Names()
    found: list[Entry] = []
    for history in _patient_histories(patient):
        # Rows before the range are read too: the first change in range needs its "before".
        found.extend(entries(history.filter(history_date__lt=until).order_by(), tz, names=names, since=since))
    found.sort(key=lambda e: (e.at, e.history_id))
    return found


def flat_rows(found: Iterable[Entry]) -> list[dict[str, str]]:
    """One row per changed field (an entry without field changes keeps one row)."""
    rows = []
    for e in found:
        head = {
            "when_utc": e.at.isoformat(),
            "when_local": e.local_at.isoformat(),
            "who": e.who,
            "record_type": e.record_type,
            "record_id": str(e.record_id),
            "action": e.action,
            "reason": e.reason,
        }
        for change in e.changes or (FieldChange("", "", "", ""),):
            rows.append({**head, "field": change.label, "before": change.before, "after": change.after})
    return [{k: row[k] for k in CSV_COLUMNS} for row in rows]


def to_csv(found: Iterable[Entry]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    # Names, notes and reasons are typed by people: exported as text, never as formulas.
    writer.writerows({k: spreadsheet.cell(v) for k, v in row.items()} for row in flat_rows(found))
    return out.getvalue()


def to_json(found: Iterable[Entry]) -> str:
    def plain(e: Entry) -> dict[str, Any]:
        d = asdict(e)
        d["at"], d["local_at"] = e.at.isoformat(), e.local_at.isoformat()
        return d

    return json.dumps([plain(e) for e in found], indent=2)


def export_filename(patient: Patient, start: date, end: date, extension: str) -> str:
    # The MRN, not the name: a file name shows in download lists and logs.
    safe = "".join(c for c in patient.mrn if c.isalnum() or c in "-_") or str(patient.pk)
    return f"audit-{safe}-{start.isoformat()}-{end.isoformat()}.{extension}"
