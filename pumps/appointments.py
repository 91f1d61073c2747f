"""Refill appointments (issue 5): the booking rules and the workflows that book, cancel,
reschedule and close a pump's next refill visit.

The rules at the top are pure (values in, no database, no clock). The workflows own their
transactions, take `now`, and announce every change so the pump's reminders re-plan and
name the booked visit. A recorded refill closes the booked visit through the in-transaction
`pumps.signals.refill_recorded` signal (connected in `pumps/apps.py`), so `record_refill`
needs no knowledge of appointments. A visit whose day ends without a refill is marked
missed, and escalated, by the message planner (`notifications.services`).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from patients.history import record_update
from pumps import domain
from pumps.models import Appointment, AppointmentStatus, Pump, Refill
from pumps.services import announce_change

# --------------------------------------------------------------------------- pure rules

MAX_BOOKING_AHEAD = timedelta(days=366)


def visit_day(starts_at: datetime, tz: ZoneInfo) -> date:
    """The clinic-local date of a visit: the day the refill-by rule and "missed" are judged on."""
    return domain.local_date(starts_at, tz)


def day_end(starts_at: datetime, tz: ZoneInfo) -> datetime:
    """The first moment after the visit's clinic-local day (its next local midnight)."""
    return datetime.combine(visit_day(starts_at, tz) + timedelta(days=1), time(0), tzinfo=tz)


def is_after_refill_by(starts_at: datetime, refill_by: date | None, tz: ZoneInfo) -> bool:
    """A visit on a day after refill-by lets the reservoir run past the clinic's margin."""
    return refill_by is not None and visit_day(starts_at, tz) > refill_by


def is_missed(starts_at: datetime, tz: ZoneInfo, now: datetime) -> bool:
    """Missed once its whole clinic-local day has passed (a late-afternoon refill still counts)."""
    return now >= day_end(starts_at, tz)


def booking_errors(
    *,
    pump_active: bool,
    starts_at: datetime,
    now: datetime,
    refill_by: date | None,
    tz: ZoneInfo,
    already_booked: datetime | None,
    acknowledged_late: bool,
    reason: str,
) -> dict[str, list[str]]:
    """Field errors for a booking ({} when it may be made).

    `already_booked` is the start of the pump's other booked visit, if any: one at a time,
    the next refill (the model's unique constraint holds the same line against races).
    """
    errors: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        errors.setdefault(name, []).append(message)

    if not pump_active:
        add("pump", "This pump is no longer implanted: no refill visit can be booked.")
    if already_booked is not None:
        local = already_booked.astimezone(tz)
        add("pump", f"This pump already has a visit booked ({local:%Y-%m-%d %H:%M}): cancel or reschedule it instead.")
    if starts_at < now:
        add("starts_at", "Cannot be in the past.")
    elif starts_at > now + MAX_BOOKING_AHEAD:
        # Refills are due every 1-6 months (the 180-day stability ceiling): a visit a year or
        # more away is a typing error, and far dates break date arithmetic downstream.
        add("starts_at", "More than a year ahead: check the date.")
    elif is_after_refill_by(starts_at, refill_by, tz):
        assert refill_by is not None
        if not acknowledged_late:
            add(
                "starts_at",
                f"This is after the refill-by date ({refill_by.isoformat()}): the reservoir may run low. "
                "Book earlier, or tick 'book after the refill-by date' and give a reason.",
            )
        elif not reason.strip():
            add("reason", "Give a reason for booking after the refill-by date.")
    return errors


# --------------------------------------------------------------------------- workflows


def _lock_pump(pump: Pump) -> Pump:
    # Locked like a refill: a refill recorded meanwhile moves refill-by, and two bookings of
    # one pump queue here instead of racing to the unique constraint.
    return Pump.objects.select_for_update().select_related("patient__clinic").get(pk=pump.pk)


def _booked(pump: Pump) -> Appointment | None:
    return Appointment.objects.filter(pump=pump, status=AppointmentStatus.BOOKED).first()


def validate_booking(
    pump: Pump,
    starts_at: datetime,
    *,
    now: datetime,
    acknowledged_late: bool = False,
    reason: str = "",
    replacing: Appointment | None = None,
) -> None:
    """Raise the field errors `book_appointment` would (for forms, before they save)."""
    other = _booked(pump)
    if other is not None and replacing is not None and other.pk == replacing.pk:
        other = None
    errors = booking_errors(
        pump_active=pump.is_active,
        starts_at=starts_at,
        now=now,
        refill_by=pump.refill_by,
        tz=pump.patient.clinic.tz,
        already_booked=other.starts_at if other else None,
        acknowledged_late=acknowledged_late,
        reason=reason,
    )
    if errors:
        raise ValidationError(errors)


def _create(
    pump: Pump, starts_at: datetime, location: str, notes: str, by: Any, now: datetime, acknowledged_late: bool, reason: str
) -> Appointment:
    late = is_after_refill_by(starts_at, pump.refill_by, pump.patient.clinic.tz)
    try:
        with transaction.atomic():  # a savepoint: a concurrent booking of the same pump
            return Appointment.objects.create(
                pump=pump,
                starts_at=starts_at,
                location=location.strip(),
                notes=notes.strip(),
                after_refill_by=late,
                # The reason is kept only where it was needed, like a dose acknowledgement.
                reason=reason.strip() if late and acknowledged_late else "",
                booked_by=by,
                created_at=now,
                updated_at=now,
            )
    except IntegrityError as exc:
        raise ValidationError({"pump": "This pump already has a visit booked: cancel or reschedule it instead."}) from exc


def book_appointment(
    pump: Pump,
    starts_at: datetime,
    location: str,
    notes: str,
    by: Any,
    now: datetime,
    acknowledged_late: bool = False,
    reason: str = "",
) -> Appointment:
    """Book the pump's next refill visit; refused with field errors (see `booking_errors`)."""
    with transaction.atomic():
        pump = _lock_pump(pump)
        validate_booking(pump, starts_at, now=now, acknowledged_late=acknowledged_late, reason=reason)
        appointment = _create(pump, starts_at, location, notes, by, now, acknowledged_late, reason)
        announce_change([pump.pk])
    return appointment


def _close(appointment: Appointment, status: str, now: datetime, **fields: Any) -> bool:
    """Close a booked visit once: a claim on its status, so a refill and a cancel cannot both win."""
    closed = (
        Appointment.objects.filter(pk=appointment.pk, status=AppointmentStatus.BOOKED).update(
            status=status, closed_at=now, updated_at=now, **fields
        )
        == 1
    )
    if closed:
        # The claim is an update(): write its history row (who: the request's user, if any).
        record_update(Appointment, [appointment.pk], reason=str(fields.get("cancellation_reason", "")))
        appointment.status, appointment.closed_at, appointment.updated_at = status, now, now
        for name, value in fields.items():
            setattr(appointment, name, value)
    return closed


def cancel_appointment(appointment: Appointment, *, by: Any, now: datetime, reason: str = "") -> Appointment:
    """Cancel a booked visit (the pump goes back to "due without an appointment")."""
    with transaction.atomic():
        _lock_pump(appointment.pump)
        if not _close(appointment, AppointmentStatus.CANCELLED, now, cancellation_reason=reason.strip()[:200]):
            raise ValidationError("Only a booked visit can be cancelled (this one is done, missed or already cancelled).")
        announce_change([appointment.pump_id])
    return appointment


def update_details(appointment: Appointment, *, location: str, notes: str, now: datetime) -> Appointment:
    """Change where a booked visit is, or its notes (the time changes through `reschedule`)."""
    with transaction.atomic():
        _lock_pump(appointment.pump)
        changed = Appointment.objects.filter(pk=appointment.pk, status=AppointmentStatus.BOOKED).update(
            location=location.strip(), notes=notes.strip(), updated_at=now
        )
        if not changed:
            raise ValidationError("Only a booked visit can be changed.")
        record_update(Appointment, [appointment.pk])
        appointment.location, appointment.notes, appointment.updated_at = location.strip(), notes.strip(), now
        announce_change([appointment.pump_id])  # the location is in the reminder email
    return appointment


def reschedule(
    appointment: Appointment,
    starts_at: datetime,
    *,
    by: Any,
    now: datetime,
    location: str | None = None,
    notes: str | None = None,
    acknowledged_late: bool = False,
    reason: str = "",
) -> Appointment:
    """Move a booked visit: the old booking is cancelled (history stays true) and a new one
    booked under the same rules, in one transaction, so the pump is never left unbooked."""
    with transaction.atomic():
        pump = _lock_pump(appointment.pump)
        validate_booking(pump, starts_at, now=now, acknowledged_late=acknowledged_late, reason=reason, replacing=appointment)
        local = starts_at.astimezone(pump.patient.clinic.tz)
        if not _close(
            appointment, AppointmentStatus.CANCELLED, now, cancellation_reason=f"Rescheduled to {local:%Y-%m-%d %H:%M}"
        ):
            raise ValidationError("Only a booked visit can be rescheduled.")
        new = _create(
            pump,
            starts_at,
            appointment.location if location is None else location,
            appointment.notes if notes is None else notes,
            by,
            now,
            acknowledged_late,
            reason,
        )
        announce_change([pump.pk])
    return new


def on_refill_recorded(refill: Refill, now: datetime) -> Appointment | None:
    """A recorded refill is the booked visit kept: mark it done and link the refill.

    Runs inside `record_refill`'s transaction (the signal is sent there), so it commits or
    rolls back with the refill. No announcement of its own: `record_refill` already
    announces the pump, and the re-plan after commit sees the visit done.
    """
    appointment = Appointment.objects.filter(pump_id=refill.pump_id, status=AppointmentStatus.BOOKED).first()
    if appointment is None or not domain.refill_keeps_visit(appointment.created_at, appointment.starts_at, refill.performed_at):
        return None
    return appointment if _close(appointment, AppointmentStatus.DONE, now, refill=refill) else None


def close_past_visits(visits: list[tuple[int, bool, int | None]], now: datetime) -> None:
    """Mark booked visits whose day ended: done when a refill came after the booking (its
    signal was missed, e.g. a refill recorded before this code existed), else missed.

    `visits` holds (appointment id, refilled, last refill id), as the planner judged them.
    """
    for pk, refilled, refill_id in visits:
        fields: dict[str, Any] = {"refill_id": refill_id} if refilled else {}
        if Appointment.objects.filter(pk=pk, status=AppointmentStatus.BOOKED).update(
            status=AppointmentStatus.DONE if refilled else AppointmentStatus.MISSED, closed_at=now, updated_at=now, **fields
        ):
            # Once per visit (a status change, not a recompute): the audit shows it, by "system".
            record_update(Appointment, [pk], reason="The visit's day ended.")


def cancel_for_ended_pump(pump_id: int, now: datetime) -> int:
    """Cancel the booked visit of a pump that was explanted or replaced (the re-plan after
    its end calls this): it must not show in the week view, nor be marked missed."""
    booked = list(Appointment.objects.filter(pump_id=pump_id, status=AppointmentStatus.BOOKED).values_list("pk", flat=True))
    cancelled = Appointment.objects.filter(pk__in=booked, status=AppointmentStatus.BOOKED).update(
        status=AppointmentStatus.CANCELLED, closed_at=now, updated_at=now, cancellation_reason="Pump explanted or replaced"
    )
    record_update(Appointment, booked, reason="Pump explanted or replaced")
    return cancelled
