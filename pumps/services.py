"""Workflows for pumps: implant, programming, refills, events, schedules.

The only place that opens transactions for pump records. Every write validates first and
raises `ValidationError` with field names (hard errors) or `DoseChangeRefused` (rules a
person may acknowledge), so nothing is half-written. Time comes in as `now`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery

from patients import history
from patients.models import Clinic, Patient
from pumps import domain
from pumps.models import (
    ClinicalEvent,
    DrugProduct,
    EventKind,
    Phase,
    Program,
    ProgramMode,
    Pump,
    PumpModel,
    PumpStatus,
    Refill,
    ScreeningOutcome,
    ScreeningTrial,
)
from pumps.signals import dose_changed, refill_recorded, schedule_changed

logger = logging.getLogger(__name__)


class DoseChangeRefused(Exception):
    """A change tripped rules that were not acknowledged with a reason."""

    def __init__(self, warnings: Sequence[domain.Warning]) -> None:
        super().__init__("; ".join(w.message for w in warnings))
        self.warnings = list(warnings)

    def as_dict(self) -> dict[str, list[dict[str, str]]]:
        return {"warnings": [{"code": w.code.value, "message": w.message} for w in self.warnings]}


def dose_policy() -> domain.DosePolicy:
    return domain.DosePolicy(
        marketed_concentrations_mcg_per_ml=settings.PUMPTRACK_MARKETED_CONCENTRATIONS_MCG_PER_ML,
        dose_warning_mcg_per_day=settings.PUMPTRACK_DOSE_WARNING_MCG_PER_DAY,
        maintenance_increase_limit_spinal_pct=settings.PUMPTRACK_MAINTENANCE_INCREASE_LIMIT_SPINAL_PCT,
        maintenance_increase_limit_cerebral_pct=settings.PUMPTRACK_MAINTENANCE_INCREASE_LIMIT_CEREBRAL_PCT,
    )


# ----------------------------------------------------------------------------- reading state


@dataclass(frozen=True)
class PumpState:
    """Where a pump stands now, for pages and previews."""

    program: Program | None
    last_fill: Refill | None
    volume_ml: Decimal | None
    alarm_on: date | None
    refill_by: date | None


def _interval_days(clinic: Clinic, phase: str) -> int:
    return clinic.titration_interval_days if phase == Phase.TITRATION else clinic.maintenance_interval_days


def _programs(pump: Pump) -> list[Program]:
    return sorted(pump.programs.all(), key=lambda p: p.effective_at)


def _last_fill(pump: Pump) -> Refill | None:
    return pump.refills.order_by("-performed_at").first()


def alarm_volume_ml(pump: Pump, fill: Refill | None) -> Decimal:
    """The alarm volume the arithmetic uses: a corrected (higher) one applies at once, a
    lower one from the next fill (the fill records the volume in force when it was made)."""
    stored: Decimal = pump.low_reservoir_alarm_ml
    return max(fill.low_reservoir_alarm_ml, stored) if fill else stored


def segments_since(programs: Sequence[Program], since: datetime) -> list[domain.Segment]:
    """The program in force at `since` and every later one, as rate segments."""
    in_force = [p for p in programs if p.effective_at <= since][-1:]
    later = [p for p in programs if p.effective_at > since]
    return [domain.Segment(p.effective_at, p.rate_ml_per_day) for p in in_force + later]


def schedule_for(
    pump: Pump, fill: Refill | None, programs: Sequence[Program], at: datetime | None = None, phase: str | None = None
) -> domain.Schedule | None:
    if fill is None or not programs:
        return None
    clinic = pump.patient.clinic
    return domain.schedule(
        fill=domain.Fill(fill.performed_at, fill.volume_after_fill_ml),
        segments=segments_since(programs, fill.performed_at),
        alarm_ml=alarm_volume_ml(pump, fill),
        tz=clinic.tz,
        margin_days=clinic.refill_margin_days,
        interval_days=_interval_days(clinic, phase or pump.phase),
        at=at,
    )


def _unknown_contents_refill_by(pump: Pump) -> date | None:
    """An active pump with no recorded fill or program has unknown contents: it is due at
    once (its implant date), so it stays on every due list until the record is complete."""
    return domain.local_date(pump.implanted_at, pump.patient.clinic.tz) if pump.is_active else None


def pump_state(pump: Pump, now: datetime) -> PumpState:
    return _state(pump, _programs(pump), _last_fill(pump), now)


def pump_states(pumps: Sequence[Pump], now: datetime) -> dict[int, PumpState]:
    """`pump_state` for many pumps with two queries (lists and API pages).

    The pumps need `patient__clinic` loaded (select_related).
    """
    ids = [p.pk for p in pumps]
    programs: dict[int, list[Program]] = defaultdict(list)
    for program in Program.objects.filter(pump_id__in=ids).order_by("effective_at"):
        programs[program.pump_id].append(program)
    latest = Refill.objects.filter(pump=OuterRef("pump")).order_by("-performed_at").values("pk")[:1]
    fills = {r.pump_id: r for r in Refill.objects.filter(pump_id__in=ids, pk=Subquery(latest))}
    return {p.pk: _state(p, programs[p.pk], fills.get(p.pk), now) for p in pumps}


def _state(pump: Pump, programs: Sequence[Program], fill: Refill | None, now: datetime) -> PumpState:
    # An explanted or replaced pump has no volume or dates to act on.
    sched = schedule_for(pump, fill, programs, at=now) if pump.is_active else None
    return PumpState(
        program=programs[-1] if programs else None,
        last_fill=fill,
        # Rounded down: the display never shows more drug than the arithmetic leaves.
        volume_ml=sched.volume_ml.quantize(domain.CENT, rounding=ROUND_FLOOR) if sched else None,
        alarm_on=sched.alarm_on if sched else None,
        refill_by=sched.refill_by if sched else _unknown_contents_refill_by(pump),
    )


def announce_change(pump_ids: Iterable[int]) -> None:
    """Tell listeners (the message planner) about changed pumps once the transaction commits.

    `robust`: a listener's failure is logged, never turned into a failed request after the
    record was saved; the planning sweep catches up within its interval.
    """
    ids = list(pump_ids)
    if ids:
        transaction.on_commit(lambda: schedule_changed.send(sender=Pump, pump_ids=ids), robust=True)


def recompute_schedule(pump: Pump, *, announce: bool = True) -> Pump:
    """Store the pump's alarm and refill-by dates from its recorded history."""
    sched = schedule_for(pump, _last_fill(pump), _programs(pump)) if pump.is_active else None
    alarm_on = sched.alarm_on if sched else None
    refill_by = sched.refill_by if sched else _unknown_contents_refill_by(pump)
    # Always written: the caller's object may hold dates older than the stored ones.
    pump.alarm_on, pump.refill_by = alarm_on, refill_by
    Pump.objects.filter(pk=pump.pk).update(alarm_on=alarm_on, refill_by=refill_by)
    if announce:
        announce_change([pump.pk])
    return pump


@dataclass(frozen=True)
class RecomputeResult:
    done: int
    changed: int
    failed: list[int]


def recompute_many(
    pump_ids: Iterable[int], *, announce_changed: bool, advance: Callable[[], object] | None = None
) -> RecomputeResult:
    """Re-store each active pump's dates, each under its own lock and transaction.

    One bad pump must not leave every later pump stale (STYLE.md anti-patterns): its error is
    logged and the others are done; the caller decides how to report `failed`. With
    `announce_changed`, a pump whose dates moved is re-planned after its commit (the hourly
    sweep leaves that to the planning sweep that follows it).
    """
    done = changed = 0
    failed: list[int] = []
    for pk in pump_ids:
        try:
            with transaction.atomic():
                # Locked and re-read like a refill: one committed since the caller listed the
                # pumps must not be overwritten with dates computed from an older history.
                pump = Pump.objects.select_for_update(of=("self",)).select_related("patient__clinic").filter(pk=pk).first()
                if pump is not None and pump.is_active:
                    before = (pump.alarm_on, pump.refill_by)
                    recompute_schedule(pump, announce=False)
                    if (pump.alarm_on, pump.refill_by) != before:
                        changed += 1
                        if announce_changed:
                            announce_change([pump.pk])
        except Exception:
            logger.exception("recomputing pump %s failed", pk)
            failed.append(pk)
        else:
            done += 1
        if advance is not None:
            advance()
    return RecomputeResult(done, changed, failed)


def recompute_clinic(clinic: Clinic) -> int:
    """Re-store every active pump's dates after the clinic's policy changed."""
    ids = Pump.objects.filter(patient__clinic=clinic, status=PumpStatus.ACTIVE).values_list("pk", flat=True)
    count = 0
    for pk in ids.iterator():
        with transaction.atomic():
            # Locked like a refill, so a refill saved meanwhile is not overwritten with older dates.
            pump = Pump.objects.select_for_update().select_related("patient__clinic").get(pk=pk)
            recompute_schedule(pump)
        count += 1
    return count


# ----------------------------------------------------------------------------- validation helpers


class _Errors:
    """Collects field errors so that all are reported at once."""

    def __init__(self) -> None:
        self.by_field: dict[str, list[str]] = {}

    def add(self, name: str, message: str) -> None:
        self.by_field.setdefault(name, []).append(message)

    def raise_if_any(self) -> None:
        if self.by_field:
            raise ValidationError(self.by_field)


def _check_moment(errors: _Errors, name: str, moment: datetime, pump: Pump, now: datetime) -> None:
    if moment > now:
        errors.add(name, "Cannot be in the future.")
    if moment < pump.implanted_at:
        errors.add(name, f"Cannot be before the implant ({pump.implanted_at:%Y-%m-%d %H:%M}).")


def _check_append(errors: _Errors, name: str, moment: datetime, programs: Sequence[Program], fill: Refill | None) -> None:
    """The history is append-only, so stored results of earlier records stay true."""
    if fill is not None and moment < fill.performed_at:
        errors.add(name, f"Must not be before the last refill ({fill.performed_at:%Y-%m-%d %H:%M}).")
    if programs and moment < programs[-1].effective_at:
        errors.add(name, f"Must not be before the last programming change ({programs[-1].effective_at:%Y-%m-%d %H:%M}).")


def _acknowledge(warnings: Sequence[domain.Warning], acknowledged: Iterable[str], reason: str) -> list[str]:
    """Return the acknowledged codes to store, or refuse (DESIGN "Dose-change safety")."""
    acknowledged = set(acknowledged)
    unknown = acknowledged - {r.value for r in domain.Rule}
    if unknown:
        raise ValidationError({"acknowledged_warnings": [f"Unknown warning code: {c}." for c in sorted(unknown)]})
    if any(w.code.value not in acknowledged for w in warnings):
        # Name every rule the change trips, so one acknowledgement can cover them all.
        raise DoseChangeRefused(warnings)
    if warnings and not reason.strip():
        raise ValidationError({"reason": ["Give a reason for acknowledging the warnings."]})
    return [w.code.value for w in warnings]


# ----------------------------------------------------------------------------- programming


@dataclass(frozen=True)
class ProgramInput:
    effective_at: datetime
    concentration_mcg_per_ml: Decimal
    mode: str = ProgramMode.SIMPLE
    dose_mcg_per_day: Decimal | None = None
    flex_steps: list[dict[str, Any]] = field(default_factory=list)
    basal_mcg_per_day: Decimal | None = None
    bolus_mcg: Decimal | None = None
    boluses_per_day: int | None = None


@dataclass(frozen=True)
class ProgramPreview:
    dose_mcg_per_day: Decimal
    previous_dose_mcg_per_day: Decimal | None
    change_pct: Decimal | None
    warnings: list[domain.Warning]
    current: PumpState
    alarm_on: date | None
    refill_by: date | None


def parse_flex_steps(raw: Any) -> list[domain.FlexStep]:
    """Flex steps from JSON: [{"starts": "HH:MM", "mcg_per_hour": "12.5"}, ...]."""
    if not isinstance(raw, list) or not raw:
        raise ValidationError({"flex_steps": ["A flex program needs a list of steps."]})
    steps = []
    for i, item in enumerate(raw, start=1):
        try:
            starts = time.fromisoformat(str(item["starts"]))
            rate = Decimal(str(item["mcg_per_hour"]))
        except (KeyError, TypeError, ValueError, InvalidOperation):
            raise ValidationError({"flex_steps": [f'Step {i}: give "starts" as HH:MM and "mcg_per_hour" as a number.']}) from None
        if not rate.is_finite() or rate < 0:
            raise ValidationError({"flex_steps": [f"Step {i}: the rate must not be negative."]})
        steps.append(domain.FlexStep(starts.replace(second=0, microsecond=0), rate))
    if len(steps) > 13:  # "up to 13 changes every day" [S34], clinical.md §1.1 #12
        raise ValidationError({"flex_steps": ["A flex schedule has at most 13 steps a day."]})
    try:
        domain.flex_daily_dose_mcg(steps)
    except ValueError as exc:
        raise ValidationError({"flex_steps": [str(exc).capitalize() + "."]}) from None
    return steps


# The largest daily dose a program record holds (dose_field: 9 digits, 3 decimals).
MAX_STORABLE_DOSE_MCG_PER_DAY = Decimal("999999.999")


def _program_dose(inp: ProgramInput, errors: _Errors) -> Decimal | None:
    """The daily dose the program delivers, to the 0.001 mcg a record stores, so that the
    rules judge exactly the dose that is saved."""
    dose = _computed_dose(inp, errors)
    if dose is None:
        return None
    if dose > MAX_STORABLE_DOSE_MCG_PER_DAY:
        field_name = {ProgramMode.FLEX: "flex_steps", ProgramMode.PERIODIC_BOLUS: "bolus_mcg"}.get(
            ProgramMode(inp.mode) if inp.mode in ProgramMode.values else ProgramMode.SIMPLE, "dose_mcg_per_day"
        )
        errors.add(field_name, f"This gives {dose:.0f} mcg/day, more than a program can record: check the units.")
        return None
    stored = dose.quantize(Decimal("0.001"))
    return dose if dose == stored else stored


def _computed_dose(inp: ProgramInput, errors: _Errors) -> Decimal | None:
    if inp.mode == ProgramMode.FLEX:
        try:
            return domain.flex_daily_dose_mcg(parse_flex_steps(inp.flex_steps))
        except ValidationError as exc:
            for message in exc.message_dict["flex_steps"]:
                errors.add("flex_steps", message)
            return None
    if inp.mode == ProgramMode.PERIODIC_BOLUS:
        missing = [n for n in ("basal_mcg_per_day", "bolus_mcg", "boluses_per_day") if getattr(inp, n) is None]
        for name in missing:
            errors.add(name, "Required for a periodic-bolus program.")
        if missing:
            return None
        assert inp.basal_mcg_per_day is not None and inp.bolus_mcg is not None and inp.boluses_per_day is not None
        negative = [n for n in ("basal_mcg_per_day", "bolus_mcg", "boluses_per_day") if getattr(inp, n) < 0]
        for name in negative:
            errors.add(name, "Must not be negative.")
        if negative:
            return None
        return domain.bolus_daily_dose_mcg(inp.basal_mcg_per_day, inp.bolus_mcg, inp.boluses_per_day)
    if inp.mode != ProgramMode.SIMPLE:
        errors.add("mode", f"Unknown mode {inp.mode!r}.")
        return None
    if inp.dose_mcg_per_day is None:
        errors.add("dose_mcg_per_day", "This field is required.")
        return None
    if inp.dose_mcg_per_day < 0:
        errors.add("dose_mcg_per_day", "The dose must not be negative.")
        return None
    return inp.dose_mcg_per_day


def _effective_screening(patient: Patient) -> ScreeningTrial | None:
    positives = [t for t in patient.screening_trials.all() if t.outcome == ScreeningOutcome.POSITIVE]
    return min(positives, key=lambda t: (t.dose_mcg, t.given_at), default=None)


def _last_increase_at(programs: Sequence[Program]) -> datetime | None:
    increases = [
        p.effective_at
        for p in programs
        if p.previous_dose_mcg_per_day is not None and p.dose_mcg_per_day > p.previous_dose_mcg_per_day
    ]
    return increases[-1] if increases else None


def _previous_pump_dose(pump: Pump) -> Decimal | None:
    """A replacement pump continues the dose of the pump it replaced (clinical.md §9 #115)."""
    return (
        Program.objects.filter(pump__patient=pump.patient, pump__implanted_at__lt=pump.implanted_at)
        .exclude(pump=pump)
        .order_by("-pump__implanted_at", "-effective_at")
        .values_list("dose_mcg_per_day", flat=True)
        .first()
    )


def _dose_context(pump: Pump, programs: Sequence[Program], at: datetime) -> domain.DoseContext:
    patient = pump.patient
    trial = _effective_screening(patient)
    previous = programs[-1].dose_mcg_per_day if programs else _previous_pump_dose(pump)
    return domain.DoseContext(
        phase=domain.Phase(pump.phase),
        origin=domain.Origin(patient.spasticity_origin),
        age_years=patient.age_on(domain.local_date(at, patient.clinic.tz)),
        implanted_at=pump.implanted_at,
        previous_dose_mcg_per_day=previous,
        last_increase_at=_last_increase_at(programs),
        screening_dose_mcg=Decimal(trial.dose_mcg) if trial else None,
        screening_effect_hours=trial.effect_duration_hours if trial else None,
        concentration_range_mcg_per_ml=pump.model.concentration_range,
    )


def preview_program(pump: Pump, inp: ProgramInput, now: datetime) -> ProgramPreview:
    """Validate a programming change and compute its effect, writing nothing."""
    errors = _Errors()
    programs = _programs(pump)
    fill = _last_fill(pump)
    if not pump.is_active:
        errors.add("pump", f"The pump is {pump.get_status_display().lower()}: it cannot be programmed.")
    _check_moment(errors, "effective_at", inp.effective_at, pump, now)
    _check_append(errors, "effective_at", inp.effective_at, programs, fill)
    if programs and inp.effective_at == programs[-1].effective_at:
        errors.add("effective_at", "Another programming change has this exact time.")
    if inp.concentration_mcg_per_ml <= 0:
        errors.add("concentration_mcg_per_ml", "The concentration must be positive.")
    elif fill is not None and inp.concentration_mcg_per_ml != fill.concentration_mcg_per_ml:
        # The reservoir holds what the last fill put in; a new strength needs a refill.
        errors.add(
            "concentration_mcg_per_ml",
            f"The reservoir holds {domain.quantity_text(fill.concentration_mcg_per_ml)} mcg/mL since the fill of "
            f"{fill.performed_at:%Y-%m-%d}; change the concentration when refilling.",
        )
    dose = _program_dose(inp, errors)
    errors.raise_if_any()
    assert dose is not None

    context = _dose_context(pump, programs, inp.effective_at)
    warnings = domain.dose_change_warnings(
        dose_mcg_per_day=dose,
        concentration_mcg_per_ml=inp.concentration_mcg_per_ml,
        effective_at=inp.effective_at,
        context=context,
        policy=dose_policy(),
    )
    proposed = Program(
        pump=pump, effective_at=inp.effective_at, dose_mcg_per_day=dose, concentration_mcg_per_ml=inp.concentration_mcg_per_ml
    )
    after = schedule_for(pump, fill, [*programs, proposed])
    previous = context.previous_dose_mcg_per_day
    return ProgramPreview(
        dose_mcg_per_day=dose,
        previous_dose_mcg_per_day=previous,
        change_pct=domain.percent_change(previous, dose) if previous else None,
        warnings=warnings,
        current=pump_state(pump, now),
        alarm_on=after.alarm_on if after else None,
        refill_by=after.refill_by if after else None,
    )


def dose_change_reason(reason: str, acknowledged: Iterable[str]) -> str:
    """The audit trail's reason for a dose change: the clinician's reason, the warnings it
    acknowledged, and (when neither) the reason given on the admin form, if any."""
    codes = list(acknowledged)
    parts = [reason.strip()] if reason.strip() else []
    if codes:
        parts.append("Acknowledged: " + ", ".join(codes))
    return " · ".join(parts) or history.current_reason()


def refill_change_reason(refill: Refill) -> str:
    """A refill's audit reason: the acknowledgement's reason, and the observation notes when
    the discrepancy was flagged (they explain it)."""
    parts = [refill.reason] if refill.reason else []
    if refill.acknowledged_warnings:
        parts.append("Acknowledged: " + ", ".join(refill.acknowledged_warnings))
    if refill.discrepancy_flagged and refill.notes.strip():
        parts.append(f"Discrepancy note: {refill.notes.strip()}")
    return " · ".join(parts) or history.current_reason()


def change_program(
    pump: Pump, inp: ProgramInput, *, by: Any, now: datetime, acknowledged: Iterable[str] = (), reason: str = ""
) -> Program:
    """Record a programming change, refusing unacknowledged warnings."""
    with transaction.atomic():
        pump = Pump.objects.select_for_update().select_related("patient__clinic", "model").get(pk=pump.pk)
        preview = preview_program(pump, inp, now)
        codes = _acknowledge(preview.warnings, acknowledged, reason)
        program = Program(
            pump=pump,
            effective_at=inp.effective_at,
            mode=inp.mode,
            dose_mcg_per_day=preview.dose_mcg_per_day,
            concentration_mcg_per_ml=inp.concentration_mcg_per_ml,
            flex_steps=inp.flex_steps if inp.mode == ProgramMode.FLEX else [],
            basal_mcg_per_day=inp.basal_mcg_per_day if inp.mode == ProgramMode.PERIODIC_BOLUS else None,
            bolus_mcg=inp.bolus_mcg if inp.mode == ProgramMode.PERIODIC_BOLUS else None,
            boluses_per_day=inp.boluses_per_day if inp.mode == ProgramMode.PERIODIC_BOLUS else None,
            previous_dose_mcg_per_day=preview.previous_dose_mcg_per_day,
            acknowledged_warnings=codes,
            reason=reason.strip(),
            author=by,
        )
        # The history row carries the dose change's own reason and what it acknowledged.
        program._change_reason = dose_change_reason(program.reason, codes)  # type: ignore[attr-defined]
        history.attribute(program, by)
        program.save(force_insert=True)
        recompute_schedule(pump)
        dose_changed.send(sender=Program, program=program)
    return program


# ----------------------------------------------------------------------------- refills


@dataclass(frozen=True)
class RefillInput:
    performed_at: datetime
    withdrawn_ml: Decimal
    volume_added_ml: Decimal
    concentration_mcg_per_ml: Decimal
    drug_product: str = DrugProduct.LIORESAL
    drug_lot: str = ""
    expires_on: date | None = None
    method: str = ""
    notes: str = ""


@dataclass(frozen=True)
class RefillPreview:
    is_initial_fill: bool
    expected_residual_ml: Decimal | None
    discrepancy: domain.Discrepancy | None
    volume_after_fill_ml: Decimal
    low_reservoir_alarm_ml: Decimal
    concentration_changed: bool
    warnings: list[domain.Warning]
    current: PumpState
    alarm_on: date | None
    refill_by: date


def preview_refill(pump: Pump, inp: RefillInput, now: datetime) -> RefillPreview:
    """Validate a refill and compute everything it stores, writing nothing."""
    errors = _Errors()
    programs = _programs(pump)
    fill = _last_fill(pump)
    capacity = pump.model.reservoir_ml
    if not pump.is_active:
        errors.add("pump", f"The pump is {pump.get_status_display().lower()}: it cannot be refilled.")
    if not programs:
        errors.add("pump", "Record the pump's programming before its first fill.")
    _check_moment(errors, "performed_at", inp.performed_at, pump, now)
    _check_append(errors, "performed_at", inp.performed_at, programs, fill)
    if fill is not None and inp.performed_at == fill.performed_at:
        errors.add("performed_at", "Another refill has this exact time.")
    if inp.withdrawn_ml < 0:
        errors.add("withdrawn_ml", "A volume cannot be negative.")
    elif inp.withdrawn_ml > capacity:
        errors.add("withdrawn_ml", f"More than the reservoir holds ({domain.quantity_text(capacity)} mL).")
    if inp.volume_added_ml <= 0:
        errors.add("volume_added_ml", "The volume added must be positive.")
    elif inp.volume_added_ml > capacity:
        # A refill may never leave more than the reservoir capacity (DESIGN; R6).
        errors.add("volume_added_ml", f"Exceeds the reservoir capacity of {domain.quantity_text(capacity)} mL.")
    if inp.concentration_mcg_per_ml <= 0:
        errors.add("concentration_mcg_per_ml", "The concentration must be positive.")
    if inp.expires_on is not None and inp.expires_on < domain.local_date(inp.performed_at, pump.patient.clinic.tz):
        errors.add("expires_on", "The drug had expired before this refill.")
    errors.raise_if_any()

    discrepancy = None
    expected = None
    if fill is not None:
        segments = segments_since(programs, fill.performed_at)
        delivered = domain.delivered_ml(fill.performed_at, segments, inp.performed_at)
        expected = domain.volume_at(fill.volume_after_fill_ml, fill.performed_at, segments, inp.performed_at)
        discrepancy = domain.residual_discrepancy(
            withdrawn_ml=inp.withdrawn_ml,
            expected_residual_ml=expected,
            delivered_since_fill_ml=min(delivered, fill.volume_after_fill_ml),
            accuracy_pct=pump.model.accuracy_pct,
        )
        expected = discrepancy.expected_residual_ml

    current_program = programs[-1]
    concentration_changed = inp.concentration_mcg_per_ml != current_program.concentration_mcg_per_ml
    if concentration_changed and current_program.effective_at == inp.performed_at:
        # The new strength re-programs the pump at the fill; one program per moment.
        raise ValidationError({"performed_at": ["A programming change has this exact time: record the refill a minute later."]})
    problem = domain.concentration_problem(
        inp.concentration_mcg_per_ml, dose_policy().marketed_concentrations_mcg_per_ml, pump.model.concentration_range
    )
    warnings = [domain.Warning(domain.Rule.CONCENTRATION_UNUSUAL, problem)] if problem else []

    new_fill = Refill(
        performed_at=inp.performed_at,
        volume_after_fill_ml=inp.volume_added_ml,
        low_reservoir_alarm_ml=pump.low_reservoir_alarm_ml,
    )
    program_after = Program(
        effective_at=current_program.effective_at,
        dose_mcg_per_day=current_program.dose_mcg_per_day,
        concentration_mcg_per_ml=inp.concentration_mcg_per_ml,
    )
    after = schedule_for(pump, new_fill, [program_after])
    assert after is not None
    return RefillPreview(
        is_initial_fill=fill is None,
        expected_residual_ml=expected,
        discrepancy=discrepancy,
        volume_after_fill_ml=inp.volume_added_ml,
        low_reservoir_alarm_ml=pump.low_reservoir_alarm_ml,
        concentration_changed=concentration_changed,
        warnings=warnings,
        current=pump_state(pump, now),
        alarm_on=after.alarm_on,
        refill_by=after.refill_by,
    )


def discrepancy_fields(d: domain.Discrepancy | None) -> dict[str, Any]:
    """A refill's stored discrepancy fields (none for the initial fill)."""
    return {
        "discrepancy_ml": d.discrepancy_ml if d else None,
        "discrepancy_band_ml": d.band_ml if d else None,
        "discrepancy_flagged": d.flagged if d else False,
    }


def record_refill(
    pump: Pump, inp: RefillInput, *, by: Any, now: datetime, acknowledged: Iterable[str] = (), reason: str = ""
) -> Refill:
    """Record a refill with its computed results; a new strength re-programs the pump."""
    with transaction.atomic():
        pump = Pump.objects.select_for_update().select_related("patient__clinic", "model").get(pk=pump.pk)
        preview = preview_refill(pump, inp, now)
        codes = _acknowledge(preview.warnings, acknowledged, reason)
        if preview.concentration_changed:
            # Same dose in mcg/day at the new strength: the pump is re-programmed at the fill.
            current = _programs(pump)[-1]
            reprogram = Program(
                pump=pump,
                effective_at=inp.performed_at,
                mode=current.mode,
                dose_mcg_per_day=current.dose_mcg_per_day,
                concentration_mcg_per_ml=inp.concentration_mcg_per_ml,
                flex_steps=current.flex_steps,
                basal_mcg_per_day=current.basal_mcg_per_day,
                bolus_mcg=current.bolus_mcg,
                boluses_per_day=current.boluses_per_day,
                previous_dose_mcg_per_day=current.dose_mcg_per_day,
                acknowledged_warnings=codes,
                reason=f"Concentration changed at refill. {reason}".strip(),
                author=by,
            )
            reprogram._change_reason = dose_change_reason(reprogram.reason, codes)  # type: ignore[attr-defined]
            history.attribute(reprogram, by)
            reprogram.save(force_insert=True)
        refill = Refill(
            pump=pump,
            performed_at=inp.performed_at,
            withdrawn_ml=inp.withdrawn_ml,
            volume_added_ml=inp.volume_added_ml,
            concentration_mcg_per_ml=inp.concentration_mcg_per_ml,
            drug_product=inp.drug_product,
            drug_lot=inp.drug_lot,
            expires_on=inp.expires_on,
            method=inp.method,
            notes=inp.notes,
            performed_by=by,
            is_initial_fill=preview.is_initial_fill,
            expected_residual_ml=preview.expected_residual_ml,
            **discrepancy_fields(preview.discrepancy),
            volume_after_fill_ml=preview.volume_after_fill_ml,
            low_reservoir_alarm_ml=preview.low_reservoir_alarm_ml,
            alarm_on=preview.alarm_on,
            refill_by=preview.refill_by,
            acknowledged_warnings=codes,
            reason=reason.strip() if codes else "",
        )
        refill._change_reason = refill_change_reason(refill)  # type: ignore[attr-defined]
        history.attribute(refill, by)
        refill.save(force_insert=True)
        recompute_schedule(pump)
        refill_recorded.send(sender=Refill, refill=refill)
    return refill


# ----------------------------------------------------------------------------- lifecycle


def is_eligible(patient: Patient, *, implanted_at: datetime | None = None) -> bool:
    """Implant needs a positive screening trial before it (clinical.md §3 #39-40, R1), one
    documented elsewhere, or an earlier pump (a replacement)."""
    positives = patient.screening_trials.filter(outcome=ScreeningOutcome.POSITIVE)
    earlier_pumps = patient.pumps.all()
    if implanted_at is not None:
        positives = positives.filter(given_at__lt=implanted_at)
        earlier_pumps = earlier_pumps.filter(implanted_at__lt=implanted_at)
    return patient.screened_elsewhere or positives.exists() or earlier_pumps.exists()


def validate_implant(
    *,
    patient: Patient,
    model: PumpModel,
    serial_number: str,
    implanted_at: datetime,
    now: datetime,
    low_reservoir_alarm_ml: Decimal | None = None,
    **details: Any,
) -> Decimal:
    """Raise the implant's field errors; return the alarm volume it will use."""
    errors = _Errors()
    if implanted_at > now:
        errors.add("implanted_at", "Cannot be in the future.")
    if not is_eligible(patient, implanted_at=implanted_at):
        errors.add("patient", "No positive screening trial before this implant is on record: the patient is not eligible.")
    if patient.pumps.filter(status=PumpStatus.ACTIVE).exists():
        errors.add("patient", "The patient already has an active pump: record its explant or replacement first.")
    alarm_ml = model.default_low_reservoir_alarm_ml if low_reservoir_alarm_ml is None else low_reservoir_alarm_ml
    try:
        validate_alarm_volume(model, alarm_ml)
    except ValidationError as exc:
        for message in exc.message_dict["low_reservoir_alarm_ml"]:
            errors.add("low_reservoir_alarm_ml", message)
    if Pump.objects.filter(model=model, serial_number=serial_number).exists():
        errors.add("serial_number", "A pump of this model with this serial number is already recorded.")
    errors.raise_if_any()
    return alarm_ml


def implant_pump(
    *,
    patient: Patient,
    model: PumpModel,
    serial_number: str,
    implanted_at: datetime,
    now: datetime,
    low_reservoir_alarm_ml: Decimal | None = None,
    **details: Any,
) -> Pump:
    with transaction.atomic():
        Patient.objects.select_for_update().filter(pk=patient.pk).first()  # one implant at a time
        alarm_ml = validate_implant(
            patient=patient,
            model=model,
            serial_number=serial_number,
            implanted_at=implanted_at,
            now=now,
            low_reservoir_alarm_ml=low_reservoir_alarm_ml,
        )
        try:
            with transaction.atomic():  # a savepoint: the same serial implanted concurrently elsewhere
                pump = Pump.objects.create(
                    patient=patient,
                    model=model,
                    serial_number=serial_number,
                    implanted_at=implanted_at,
                    low_reservoir_alarm_ml=alarm_ml,
                    **details,
                )
        except IntegrityError:
            raise ValidationError(
                {"serial_number": ["A pump of this model with this serial number is already recorded."]}
            ) from None
        return recompute_schedule(pump)  # due at once until its program and fill are recorded


def end_pump(pump: Pump, *, status: str, on: date, reason: str, now: datetime) -> Pump:
    """Explant or replace a pump: it leaves every due list and takes no more doses."""
    errors = _Errors()
    if status not in (PumpStatus.EXPLANTED, PumpStatus.REPLACED):
        errors.add("status", "Choose explanted or replaced.")
    if not pump.is_active:
        errors.add("status", "The pump is not active.")
    tz = pump.patient.clinic.tz
    if on > domain.local_date(now, tz):
        errors.add("explanted_on", "Cannot be in the future.")
    if on < domain.local_date(pump.implanted_at, tz):
        errors.add("explanted_on", "Cannot be before the implant.")
    last = max(
        [r.performed_at for r in pump.refills.order_by("-performed_at")[:1]]
        + [p.effective_at for p in pump.programs.order_by("-effective_at")[:1]],
        default=None,
    )
    if last is not None and on < domain.local_date(last, tz):
        errors.add("explanted_on", f"Cannot be before the last refill or programming change ({domain.local_date(last, tz)}).")
    if not reason.strip():
        errors.add("explant_reason", "Give the reason.")
    errors.raise_if_any()
    with transaction.atomic():
        pump.status, pump.explanted_on, pump.explant_reason = status, on, reason.strip()
        pump.save(update_fields=["status", "explanted_on", "explant_reason"])
        recompute_schedule(pump)
    return pump


def set_phase(pump: Pump, phase: str, *, now: datetime) -> Pump:
    """Record the stable dose (maintenance) or return to titration; the visit interval follows."""
    if phase not in Phase.values:
        raise ValidationError({"phase": [f"Unknown phase {phase!r}."]})
    if not pump.is_active:
        raise ValidationError({"phase": ["The pump is not active."]})
    with transaction.atomic():
        pump.phase = phase
        pump.stable_dose_at = now if phase == Phase.MAINTENANCE else None
        pump.save(update_fields=["phase", "stable_dose_at"])
        recompute_schedule(pump)
    return pump


def validate_alarm_volume(model: PumpModel, alarm_ml: Decimal) -> None:
    """The low-reservoir alarm lies between empty and the reservoir's capacity."""
    if not Decimal(0) <= alarm_ml < model.reservoir_ml:
        raise ValidationError(
            {"low_reservoir_alarm_ml": [f"Must be between 0 and {domain.quantity_text(model.reservoir_ml)} mL."]}
        )


def set_low_reservoir_alarm(pump: Pump, alarm_ml: Decimal) -> Pump:
    """Record the pump's alarm volume. A higher one applies at once (it may correct an error,
    and an earlier date is never unsafe); a lower one from the next fill."""
    return update_pump_details(pump, {"low_reservoir_alarm_ml": alarm_ml})


# What an implant records (the admin's add form and the API's create take these).
IMPLANT_FIELDS = (
    "patient",
    "model",
    "serial_number",
    "udi",
    "implanted_at",
    "implanting_physician",
    "following_physician",
    "low_reservoir_alarm_ml",
    "estimated_end_of_service_on",
)

# Device details staff may correct on the pump page; everything else has its own workflow.
PUMP_DETAIL_FIELDS = frozenset(
    {"udi", "implanting_physician", "following_physician", "low_reservoir_alarm_ml", "estimated_end_of_service_on"}
)


def update_pump_details(pump: Pump, changes: dict[str, Any]) -> Pump:
    """Save only the given detail fields, under the pump's lock, and re-store its dates."""
    unknown = set(changes) - PUMP_DETAIL_FIELDS
    if unknown:
        raise ValidationError({name: ["Not changed here: use its own action."] for name in sorted(unknown)})
    if "low_reservoir_alarm_ml" in changes:
        validate_alarm_volume(pump.model, changes["low_reservoir_alarm_ml"])
    with transaction.atomic():
        locked = Pump.objects.select_for_update().select_related("patient__clinic", "model").get(pk=pump.pk)
        for name, value in changes.items():
            setattr(locked, name, value)
            setattr(pump, name, value)
        if changes:
            locked.save(update_fields=sorted(changes))
        recompute_schedule(locked)
        pump.alarm_on, pump.refill_by = locked.alarm_on, locked.refill_by
    return pump


def recompute_patient(patient: Patient) -> None:
    """Re-store the dates of a patient's active pumps (e.g. after a move to another clinic)."""
    for pk in patient.pumps.filter(status=PumpStatus.ACTIVE).values_list("pk", flat=True):
        with transaction.atomic():
            recompute_schedule(Pump.objects.select_for_update().select_related("patient__clinic").get(pk=pk))


# ----------------------------------------------------------------------------- screening and events


def validate_screening(*, patient: Patient, given_at: datetime, dose_mcg: int, now: datetime) -> None:
    previous = [t.given_at for t in patient.screening_trials.all()]
    problems = domain.screening_problems(dose_mcg=Decimal(dose_mcg), given_at=given_at, previous_given_at=previous)
    if given_at > now:
        problems.setdefault("given_at", "Cannot be in the future.")
    if problems:
        raise ValidationError({k: [v] for k, v in problems.items()})


def record_screening(*, patient: Patient, given_at: datetime, dose_mcg: int, now: datetime, **details: Any) -> ScreeningTrial:
    with transaction.atomic():
        Patient.objects.select_for_update().filter(pk=patient.pk).first()  # serialise doses per patient
        validate_screening(patient=patient, given_at=given_at, dose_mcg=dose_mcg, now=now)
        return ScreeningTrial.objects.create(patient=patient, given_at=given_at, dose_mcg=dose_mcg, **details)


def validate_event(*, pump: Pump, kind: str, occurred_at: datetime, now: datetime, **details: Any) -> None:
    errors = _Errors()
    if kind not in EventKind.values:
        errors.add("kind", f"Unknown event kind {kind!r}.")
    # A planned MRI lies ahead by nature; every other event has happened.
    if kind != EventKind.MRI_PLANNED and occurred_at > now:
        errors.add("occurred_at", "Cannot be in the future.")
    if occurred_at < pump.implanted_at:
        errors.add("occurred_at", f"Cannot be before the implant ({pump.implanted_at:%Y-%m-%d %H:%M}).")
    strength = details.get("field_strength_tesla")
    limit = pump.model.mri_max_tesla
    if kind in (EventKind.MRI_PLANNED, EventKind.MRI_DONE) and strength is not None and limit is not None and strength > limit:
        errors.add("field_strength_tesla", f"Above this pump model's MRI limit of {domain.quantity_text(limit)} T.")
    errors.raise_if_any()


def record_event(*, pump: Pump, kind: str, occurred_at: datetime, now: datetime, by: Any = None, **details: Any) -> ClinicalEvent:
    validate_event(pump=pump, kind=kind, occurred_at=occurred_at, now=now, **details)
    with transaction.atomic():
        event = ClinicalEvent.objects.create(pump=pump, kind=kind, occurred_at=occurred_at, recorded_by=by, **details)
        announce_change([pump.pk])  # an MRI, a post-MRI check or an ERI changes the plan
    return event
