"""Pure clinical rules for ITB pumps: refill arithmetic and dose-change safety.

Standard library only, no database, no clock: every moment is passed in. All quantities
are `Decimal`; names carry their unit. The contract is `DESIGN.md` ("Refill arithmetic",
"Dose-change safety"); facts and sources are in `clinical.md`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

ZERO = Decimal("0")
CENT = Decimal("0.01")
SECONDS_PER_DAY = Decimal(86400)

# Cap on a computed alarm date's distance (a century); refill-by binds long before.
MAX_ALARM_DAYS = 36500
# Drug-stability ceiling on the refill interval: "refilled within a maximum of 180 days"
# [S52]; Lioresal "stable for six months" in SynchroMed II [S43]. clinical.md §2.1 #36-37.
STABILITY_CEILING_DAYS = 180
# Residual discrepancies "greater than 2 mL should be evaluated" [S50]. clinical.md §5.2 #64.
DISCREPANCY_LIMIT_ML = Decimal("2.00")
# Screening doses the label allows: 50, 75, 100 mcg, and 25 mcg for very small patients
# [S16]; at most three doses [S12], each 24 h after the previous [S16]. clinical.md §3 #40, R1.
SCREENING_DOSES_MCG = (Decimal(25), Decimal(50), Decimal(75), Decimal(100))
SCREENING_MAX_DOSES = 3
SCREENING_MIN_GAP = timedelta(hours=24)
# Initial dose: 2x the effective screening dose, or 1x if its effect lasted > 8 h
# [S20][S18][S23]. clinical.md §4 #47, R2.
SCREENING_LONG_EFFECT_HOURS = Decimal(8)
# No increase within 24 h of implant or of the previous increase [S23][S18]. §4 #48-49.
INCREASE_MIN_GAP = timedelta(hours=24)
# Titration increase limits: 10-30 % spinal, 5-15 % cerebral or paediatric (label, §4 #49, R3).
TITRATION_INCREASE_LIMIT_SPINAL_PCT = Decimal(30)
TITRATION_INCREASE_LIMIT_CEREBRAL_PCT = Decimal(15)
# Decreases of more than 20 % risk withdrawal (maintenance decrease 10-20 %, §4 #50).
DECREASE_LIMIT_PCT = Decimal(20)
# Cerebral-origin and paediatric limits apply under this age (§4 #49: "paediatric").
ADULT_AGE_YEARS = 18


class Phase(enum.StrEnum):
    TITRATION = "titration"
    MAINTENANCE = "maintenance"


class Origin(enum.StrEnum):
    SPINAL = "spinal"
    CEREBRAL = "cerebral"


# ----------------------------------------------------------------------------- rates


def rate_ml_per_day(dose_mcg_per_day: Decimal, concentration_mcg_per_ml: Decimal) -> Decimal:
    """Daily infused volume: dose / concentration, unrounded. Source: clinical.md §5.1."""
    if concentration_mcg_per_ml <= 0:
        raise ValueError("concentration must be positive")
    if dose_mcg_per_day < 0:
        raise ValueError("dose must not be negative")
    return dose_mcg_per_day / concentration_mcg_per_ml


@dataclass(frozen=True)
class FlexStep:
    """One step of a flex schedule: from `starts` (time of day) at `mcg_per_hour`."""

    starts: time
    mcg_per_hour: Decimal


def flex_daily_dose_mcg(steps: Sequence[FlexStep]) -> Decimal:
    """Total a flex schedule delivers over 24 h (DESIGN "Refill arithmetic").

    Each step runs until the next step's start; the last wraps round to the first, so the
    schedule covers the whole day whatever time the first step starts. SynchroMed II allows
    up to 13 changes a day [S34] (clinical.md §1.1 #12).
    """
    if not steps:
        raise ValueError("a flex schedule needs at least one step")
    ordered = sorted(steps, key=lambda s: s.starts)
    starts = [s.starts for s in ordered]
    if len(set(starts)) != len(starts):
        raise ValueError("two flex steps start at the same time")
    if any(s.mcg_per_hour < 0 for s in ordered):
        raise ValueError("a flex step's rate must not be negative")
    minutes = [s.starts.hour * 60 + s.starts.minute for s in ordered]
    total = ZERO
    for i, step in enumerate(ordered):
        end = minutes[(i + 1) % len(ordered)] + (1440 if i + 1 == len(ordered) else 0)
        total += step.mcg_per_hour * Decimal(end - minutes[i]) / 60
    return total


def bolus_daily_dose_mcg(basal_mcg_per_day: Decimal, bolus_mcg: Decimal, boluses_per_day: int) -> Decimal:
    """Periodic-bolus mode: the basal dose plus every bolus of the day (DESIGN)."""
    if basal_mcg_per_day < 0 or bolus_mcg < 0 or boluses_per_day < 0:
        raise ValueError("bolus amounts must not be negative")
    return basal_mcg_per_day + bolus_mcg * boluses_per_day


# ----------------------------------------------------------------------------- volume


@dataclass(frozen=True)
class Segment:
    """A programming segment: from `starts_at` the pump infuses `rate_ml_per_day`."""

    starts_at: datetime
    rate_ml_per_day: Decimal


def between(start: datetime, end: datetime) -> timedelta:
    """Real time from `start` to `end`.

    Python subtracts two datetimes that share a tzinfo on the wall clock, which is an hour
    off across a DST change; in UTC the difference is the true elapsed time.
    """
    return end.astimezone(UTC) - start.astimezone(UTC)


def elapsed_days(start: datetime, end: datetime) -> Decimal:
    """Exact elapsed days between two aware datetimes (seconds / 86400)."""
    delta = between(start, end)
    seconds = Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000
    return seconds / SECONDS_PER_DAY


def delivered_ml(filled_at: datetime, segments: Sequence[Segment], at: datetime) -> Decimal:
    """Volume the program delivers between the fill and `at`: Σ rate_i × days_i.

    `segments` are the programs in force since the fill, in time order; a segment that
    started before the fill counts from the fill. Source: DESIGN "Refill arithmetic".
    """
    total = ZERO
    ordered = sorted(segments, key=lambda s: s.starts_at)
    for i, seg in enumerate(ordered):
        start = max(seg.starts_at, filled_at)
        end = ordered[i + 1].starts_at if i + 1 < len(ordered) else at
        end = min(end, at)
        if end > start:
            total += seg.rate_ml_per_day * elapsed_days(start, end)
    return total


def volume_at(volume_after_fill_ml: Decimal, filled_at: datetime, segments: Sequence[Segment], at: datetime) -> Decimal:
    """Reservoir volume at `at`: volume after fill minus what was delivered, never below 0."""
    return max(ZERO, volume_after_fill_ml - delivered_ml(filled_at, segments, at))


# ----------------------------------------------------------------------------- dates


def local_date(moment: datetime, tz: ZoneInfo) -> date:
    return moment.astimezone(tz).date()


def days_until_alarm(volume_ml: Decimal, alarm_ml: Decimal, rate: Decimal) -> int | None:
    """Whole days until the reservoir reaches the low-reservoir alarm volume.

    Rounds down, so that no date is ever late; at or below the alarm volume: 0 (even at a
    zero rate: the reservoir is already low); rate zero: no alarm (None). Source: DESIGN
    "Refill arithmetic"; clinical.md §5.1 (days_to_LRA).
    """
    if rate < 0:
        raise ValueError("rate must not be negative")
    if volume_ml <= alarm_ml:
        return 0
    if rate == 0:
        return None
    return int(((volume_ml - alarm_ml) / rate).to_integral_value(rounding=ROUND_FLOOR))


def alarm_date(anchor_at: datetime, volume_ml: Decimal, alarm_ml: Decimal, rate: Decimal, tz: ZoneInfo) -> date | None:
    """The clinic-local date on which the reservoir reaches the alarm volume.

    `anchor_at` is the last fill or the last programming change, whichever is later, and
    `volume_ml` the volume then. DESIGN: `date(t) + days_until_alarm`. That is never late
    except across a DST change that sets clocks back when `t` is just after midnight: the true
    moment can then fall on the previous local day. We take whichever date is earlier, so the
    promise "never late" holds in every time zone.
    """
    days = days_until_alarm(volume_ml, alarm_ml, rate)
    if days is None:
        return None
    # A trickle can put the date beyond the calendar; a century out is as good (and earlier).
    days = min(days, MAX_ALARM_DAYS)
    by_contract = local_date(anchor_at, tz) + timedelta(days=days)
    if volume_ml <= alarm_ml:
        return by_contract
    exact_days = min((volume_ml - alarm_ml) / rate, Decimal(MAX_ALARM_DAYS + 1))
    # timedelta keeps microseconds; rounding the seconds down keeps the moment early.
    seconds = int((exact_days * SECONDS_PER_DAY).to_integral_value(rounding=ROUND_FLOOR))
    true_moment = anchor_at.astimezone(UTC) + timedelta(seconds=seconds)  # real time, not wall clock
    return min(by_contract, local_date(true_moment, tz))


def refill_by_date(
    *,
    alarm_on: date | None,
    margin_days: int,
    last_visit_on: date,
    interval_days: int,
    filled_on: date,
    ceiling_days: int = STABILITY_CEILING_DAYS,
) -> date:
    """The date the pump must be refilled by: the earliest of three limits.

    - `alarm_on − margin_days`: clinics refill 3-5 days before the alarm date [S33]
      (clinical.md §5.1 #60);
    - `last_visit_on + interval_days`: the phase's visit interval (titration monthly,
      maintenance every two to three months [SEED-2], §4 #56);
    - `filled_on + 180`: the drug-stability ceiling (§2.1, R7).
    """
    candidates = [last_visit_on + timedelta(days=interval_days), filled_on + timedelta(days=ceiling_days)]
    if alarm_on is not None:
        candidates.append(alarm_on - timedelta(days=margin_days))
    return min(candidates)


# ----------------------------------------------------------------------------- refills


@dataclass(frozen=True)
class Discrepancy:
    expected_residual_ml: Decimal
    discrepancy_ml: Decimal
    band_ml: Decimal
    flagged: bool


def residual_discrepancy(
    *, withdrawn_ml: Decimal, expected_residual_ml: Decimal, delivered_since_fill_ml: Decimal, accuracy_pct: Decimal
) -> Discrepancy:
    """Compare the withdrawn residual with the expected one (clinical.md §5.2 #63-66, R8).

    Flag when |discrepancy| > 2.00 mL [S50], or when it exceeds the pump's accuracy band
    (accuracy_pct × volume delivered since the last fill; SynchroMed II 14.5 % [S36]).
    """
    expected = expected_residual_ml.quantize(CENT, rounding=ROUND_HALF_UP)
    discrepancy = withdrawn_ml - expected
    band = accuracy_pct / 100 * delivered_since_fill_ml
    # Compare with the exact band; the stored band is rounded for display only.
    flagged = abs(discrepancy) > DISCREPANCY_LIMIT_ML or abs(discrepancy) > band
    return Discrepancy(expected, discrepancy, band.quantize(CENT, rounding=ROUND_HALF_UP), flagged)


# ----------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Fill:
    filled_at: datetime
    volume_after_fill_ml: Decimal


@dataclass(frozen=True)
class Schedule:
    """Where a pump stands at a moment: volume, alarm date, refill-by date."""

    volume_ml: Decimal
    rate_ml_per_day: Decimal
    anchor_at: datetime
    alarm_on: date | None
    refill_by: date


def schedule(
    *,
    fill: Fill,
    segments: Sequence[Segment],
    alarm_ml: Decimal,
    tz: ZoneInfo,
    margin_days: int,
    interval_days: int,
    at: datetime | None = None,
) -> Schedule:
    """Alarm and refill-by dates after the last fill (DESIGN "Refill arithmetic").

    The anchor `t` is the last fill or the last programming change, whichever is later;
    `last_visit_on` is its local date. `at` (default: the anchor) only changes the volume
    reported, never the dates, which depend on recorded events alone.
    """
    if not segments:
        raise ValueError("a pump needs a program before its schedule can be computed")
    ordered = sorted(segments, key=lambda s: s.starts_at)
    anchor_at = max(fill.filled_at, ordered[-1].starts_at)
    current = [s for s in ordered if s.starts_at <= anchor_at]
    rate = current[-1].rate_ml_per_day
    volume_at_anchor = volume_at(fill.volume_after_fill_ml, fill.filled_at, current, anchor_at)
    alarm_on = alarm_date(anchor_at, volume_at_anchor, alarm_ml, rate, tz)
    refill_by = refill_by_date(
        alarm_on=alarm_on,
        margin_days=margin_days,
        last_visit_on=local_date(anchor_at, tz),
        interval_days=interval_days,
        filled_on=local_date(fill.filled_at, tz),
    )
    volume_now = volume_at_anchor if at is None else volume_at(fill.volume_after_fill_ml, fill.filled_at, current, at)
    return Schedule(volume_now, rate, anchor_at, alarm_on, refill_by)


# ----------------------------------------------------------------------------- dose safety


class Rule(enum.StrEnum):
    """Dose-change rules a person must acknowledge (DESIGN "Dose-change safety")."""

    INCREASE_OVER_LIMIT = "increase_over_limit"
    DECREASE_OVER_LIMIT = "decrease_over_limit"
    INCREASE_TOO_SOON = "increase_too_soon"
    DOSE_ABOVE_1000 = "dose_above_1000"
    INITIAL_DOSE_UNUSUAL = "initial_dose_unusual"
    CONCENTRATION_UNUSUAL = "concentration_unusual"


@dataclass(frozen=True)
class Warning:
    code: Rule
    message: str


@dataclass(frozen=True)
class DosePolicy:
    """Limits that are settings because the sources conflict (clinical.md §10 C3, C4)."""

    marketed_concentrations_mcg_per_ml: tuple[Decimal, ...]
    dose_warning_mcg_per_day: Decimal = Decimal(1000)
    maintenance_increase_limit_spinal_pct: Decimal = Decimal(40)
    maintenance_increase_limit_cerebral_pct: Decimal = Decimal(20)


@dataclass(frozen=True)
class DoseContext:
    """What the rules need to know about the pump and patient at the change."""

    phase: Phase
    origin: Origin
    age_years: int
    implanted_at: datetime
    previous_dose_mcg_per_day: Decimal | None  # None: first program after implant
    last_increase_at: datetime | None
    screening_dose_mcg: Decimal | None  # the effective (positive) screening dose
    screening_effect_hours: Decimal | None
    concentration_range_mcg_per_ml: tuple[Decimal, Decimal] | None  # the pump's labelled range


def age_in_years(birth_date: date, on: date) -> int:
    years = on.year - birth_date.year
    if (on.month, on.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


def percent_change(old: Decimal, new: Decimal) -> Decimal:
    return (new - old) / old * 100


def increase_limit_pct(phase: Phase, origin: Origin, age_years: int, policy: DosePolicy) -> Decimal:
    """Largest increase allowed without acknowledgement.

    Titration: 30 % spinal, 15 % cerebral or under 18 (label, clinical.md §4 #49, R3).
    Maintenance: 40 % / 20 % (§4 #50, secondary copies: settings, §10 C3).
    """
    cautious = origin == Origin.CEREBRAL or age_years < ADULT_AGE_YEARS
    if phase == Phase.TITRATION:
        return TITRATION_INCREASE_LIMIT_CEREBRAL_PCT if cautious else TITRATION_INCREASE_LIMIT_SPINAL_PCT
    if cautious:
        return policy.maintenance_increase_limit_cerebral_pct
    return policy.maintenance_increase_limit_spinal_pct


def initial_doses_expected(screening_dose_mcg: Decimal, effect_hours: Decimal | None) -> tuple[Decimal, ...]:
    """First daily doses the label expects after implant (clinical.md §4 #47, R2).

    Twice the effective screening dose; the same dose if its effect lasted over 8 hours.
    Both are accepted without warning; anything else must be acknowledged.
    """
    preferred = (
        screening_dose_mcg if effect_hours is not None and effect_hours > SCREENING_LONG_EFFECT_HOURS else 2 * screening_dose_mcg
    )
    return tuple(dict.fromkeys([preferred, screening_dose_mcg, 2 * screening_dose_mcg]))


def dose_change_warnings(
    *,
    dose_mcg_per_day: Decimal,
    concentration_mcg_per_ml: Decimal,
    effective_at: datetime,
    context: DoseContext,
    policy: DosePolicy,
) -> list[Warning]:
    """Every rule a proposed program trips, in table order (DESIGN "Dose-change safety").

    Hard errors (non-positive concentration, negative dose) are the caller's to raise
    before this; everything here can be acknowledged with a reason.
    """
    warnings: list[Warning] = []
    previous = context.previous_dose_mcg_per_day
    is_increase = previous is not None and dose_mcg_per_day > previous

    if previous == 0 and dose_mcg_per_day > 0:
        # Restarting a stopped pump is an unbounded increase: re-introduction after an
        # interruption is a high-risk moment for overdose (clinical.md §6.2 #84).
        warnings.append(
            Warning(
                Rule.INCREASE_OVER_LIMIT,
                f"Restart from 0 mcg/day to {quantity_text(dose_mcg_per_day)} mcg/day: re-introduction after an "
                "interruption risks overdose.",
            )
        )
    if previous is not None and previous > 0 and dose_mcg_per_day != previous:
        change = percent_change(previous, dose_mcg_per_day)
        limit = increase_limit_pct(context.phase, context.origin, context.age_years, policy)
        if change > limit:
            warnings.append(
                Warning(
                    Rule.INCREASE_OVER_LIMIT,
                    f"Increase of {_pct(change)} exceeds the {_pct(limit)} limit for a "
                    f"{context.origin.value}-origin patient in {context.phase.value}.",
                )
            )
        if -change > DECREASE_LIMIT_PCT:
            warnings.append(
                Warning(
                    Rule.DECREASE_OVER_LIMIT,
                    f"Decrease of {_pct(-change)} exceeds {_pct(DECREASE_LIMIT_PCT)}: risk of baclofen withdrawal.",
                )
            )

    if is_increase:
        if between(context.implanted_at, effective_at) < INCREASE_MIN_GAP:
            warnings.append(Warning(Rule.INCREASE_TOO_SOON, "Increase within 24 hours of implant."))
        elif context.last_increase_at is not None and between(context.last_increase_at, effective_at) < INCREASE_MIN_GAP:
            warnings.append(Warning(Rule.INCREASE_TOO_SOON, "Increase within 24 hours of the previous increase."))

    if dose_mcg_per_day > policy.dose_warning_mcg_per_day:
        warnings.append(
            Warning(
                Rule.DOSE_ABOVE_1000,
                f"{quantity_text(dose_mcg_per_day)} mcg/day is above {quantity_text(policy.dose_warning_mcg_per_day)} mcg/day; "
                "experience above this dose is limited.",
            )
        )

    if previous is None:
        if context.screening_dose_mcg is None:
            warnings.append(
                Warning(Rule.INITIAL_DOSE_UNUSUAL, "No effective screening dose is on record to check the first dose against.")
            )
        else:
            expected = initial_doses_expected(context.screening_dose_mcg, context.screening_effect_hours)
            if dose_mcg_per_day not in expected:
                listed = " or ".join(f"{quantity_text(d)}" for d in expected)
                warnings.append(
                    Warning(
                        Rule.INITIAL_DOSE_UNUSUAL,
                        f"First dose {quantity_text(dose_mcg_per_day)} mcg/day; the screening dose of "
                        f"{quantity_text(context.screening_dose_mcg)} mcg suggests {listed} mcg/day.",
                    )
                )

    problem = concentration_problem(
        concentration_mcg_per_ml, policy.marketed_concentrations_mcg_per_ml, context.concentration_range_mcg_per_ml
    )
    if problem:
        warnings.append(Warning(Rule.CONCENTRATION_UNUSUAL, problem))
    return warnings


def concentration_problem(
    concentration_mcg_per_ml: Decimal,
    marketed: Iterable[Decimal],
    labelled_range: tuple[Decimal, Decimal] | None,
) -> str | None:
    """Why a concentration is unusual, or None (clinical.md §2 #28-33, R5)."""
    marketed = tuple(marketed)
    if labelled_range is not None:
        low, high = labelled_range
        if not low <= concentration_mcg_per_ml <= high:
            return f"{quantity_text(concentration_mcg_per_ml)} mcg/mL is outside this pump's labelled range of {quantity_text(low)}-{quantity_text(high)} mcg/mL."
    if concentration_mcg_per_ml not in marketed:
        strengths = ", ".join(quantity_text(c) for c in sorted(marketed))
        return f"{quantity_text(concentration_mcg_per_ml)} mcg/mL is not a marketed strength ({strengths} mcg/mL): diluted or compounded?"
    return None


def quantity_text(value: Decimal) -> str:
    """A quantity as people write it: 200, 12.5 (no trailing zeros, no exponent)."""
    return format(value.normalize(), "f")


def _pct(value: Decimal) -> str:
    return f"{quantity_text(value.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP))} %"


# ----------------------------------------------------------------------------- screening


def screening_problems(*, dose_mcg: Decimal, given_at: datetime, previous_given_at: Sequence[datetime]) -> dict[str, str]:
    """Hard rules of a screening trial, by field (clinical.md §3 #40, R1).

    Only 25/50/75/100 mcg; at most three doses; each at least 24 h after any other.
    """
    problems: dict[str, str] = {}
    if dose_mcg not in SCREENING_DOSES_MCG:
        problems["dose_mcg"] = "Screening doses are 25, 50, 75 or 100 mcg."
    if len(previous_given_at) >= SCREENING_MAX_DOSES:
        problems["given_at"] = f"At most {SCREENING_MAX_DOSES} screening doses may be given."
    else:
        for other in previous_given_at:
            if abs(between(other, given_at)) < SCREENING_MIN_GAP:
                problems["given_at"] = "Screening doses must be at least 24 hours apart."
                break
    return problems


# ----------------------------------------------------------------------------- refill visits

# A refill this close before a booked visit is that visit, come early; one earlier still is
# the previous visit's refill typed in after the next visit was booked (issue 5 review).
EARLY_VISIT_WINDOW = timedelta(days=7)


def refill_keeps_visit(booked_at: datetime, starts_at: datetime, performed_at: datetime) -> bool:
    """Whether a refill is the booked visit kept: performed after the booking was made, and
    no more than EARLY_VISIT_WINDOW before the visit (a workflow rule, not a clinical one)."""
    return performed_at >= max(booked_at, starts_at - EARLY_VISIT_WINDOW)
