"""The pure clinical rules of `pumps/domain.py`, against DESIGN.md "Refill arithmetic" and
"Dose-change safety" (the contract) and clinical.md §3-5. No database.

Each table row names the rule it pins; a row sits just inside and just outside each limit,
so that dropping the rule, or moving its bound by one unit, fails a row.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from pumps import domain
from pumps.domain import Origin, Phase, Rule

D = Decimal
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")

# DESIGN's worked example: 40 mL filled on 2027-01-04 at 500 mcg/mL, 200 mcg/day, 2 mL alarm.
EXAMPLE_FILLED_AT = datetime(2027, 1, 4, 10, 0, tzinfo=UTC)
EXAMPLE_RATE = D("0.4")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(tz: ZoneInfo, *args: int) -> datetime:
    """A clinic-local wall-clock time as the UTC moment the database would hand back."""
    return datetime(*args, tzinfo=tz).astimezone(UTC)  # type: ignore[misc]


# ============================================================================= rates


@pytest.mark.parametrize(
    ("dose", "concentration", "expected"),
    [
        (D(200), D(500), D("0.4")),
        (D(75), D(2000), D("0.0375")),
        (D("12.5"), D(50), D("0.25")),
        (D(0), D(500), D(0)),
        # no rounding: a third of a mL stays a third to Decimal's full precision
        (D(1), D(3), D(1) / D(3)),
    ],
)
def test_rate_is_dose_over_concentration_unrounded(dose: Decimal, concentration: Decimal, expected: Decimal) -> None:
    assert domain.rate_ml_per_day(dose, concentration) == expected


@pytest.mark.parametrize(("dose", "concentration"), [(D(200), D(0)), (D(200), D(-500)), (D(-1), D(500))])
def test_rate_refuses_non_positive_concentration_and_negative_dose(dose: Decimal, concentration: Decimal) -> None:
    with pytest.raises(ValueError):
        domain.rate_ml_per_day(dose, concentration)


@pytest.mark.parametrize(
    ("steps", "expected_mcg"),
    [
        ([(time(0), D(10))], D(240)),
        # the last step wraps round midnight to the first: 16 h × 20 + 8 h × 10
        ([(time(6), D(20)), (time(22), D(10))], D(400)),
        ([(time(22), D(10)), (time(6), D(20))], D(400)),
        ([(time(0), D(10)), (time(12), D(20))], D(360)),
        ([(time(7, 30), D(12)), (time(19, 30), D(6))], D(216)),
    ],
)
def test_flex_schedule_delivers_the_sum_of_its_steps_over_24_hours(
    steps: list[tuple[time, Decimal]], expected_mcg: Decimal
) -> None:
    assert domain.flex_daily_dose_mcg([domain.FlexStep(t, r) for t, r in steps]) == expected_mcg


@pytest.mark.parametrize(
    "steps",
    [[], [(time(6), D(10)), (time(6), D(20))], [(time(6), D(-1))]],
    ids=["no steps", "two steps at one time", "negative rate"],
)
def test_flex_schedule_refuses_impossible_steps(steps: list[tuple[time, Decimal]]) -> None:
    with pytest.raises(ValueError):
        domain.flex_daily_dose_mcg([domain.FlexStep(t, r) for t, r in steps])


def test_periodic_boluses_add_their_daily_volume_to_the_basal_dose() -> None:
    assert domain.bolus_daily_dose_mcg(D(200), D(25), 4) == D(300)


# ============================================================================= volume


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        (utc(2027, 1, 4, 0, 0), utc(2027, 1, 4, 12, 0), D("0.5")),
        (utc(2027, 1, 4, 0, 0), utc(2027, 1, 5, 12, 0), D("1.5")),
        (utc(2027, 1, 4, 0, 0), utc(2027, 1, 4, 0, 0, 1), D(1) / D(86400)),
        (utc(2027, 1, 4), utc(2027, 1, 4) + timedelta(microseconds=864_000), D("0.00001")),
        (utc(2027, 1, 4), utc(2027, 4, 9), D(95)),
    ],
)
def test_elapsed_days_are_exact_seconds_over_86400(start: datetime, end: datetime, days: Decimal) -> None:
    assert domain.elapsed_days(start, end) == days


@pytest.mark.parametrize("given_in", [UTC, LONDON], ids=["given in UTC", "given in the clinic zone"])
def test_elapsed_days_count_real_seconds_across_a_clock_change(given_in: tzinfo) -> None:
    # 2027-03-28 01:00 GMT the UK springs forward: noon to noon is 23 hours, whichever zone
    # the moments carry (Python subtracts two datetimes of one zone on the wall clock).
    start = local(LONDON, 2027, 3, 27, 12).astimezone(given_in)
    end = local(LONDON, 2027, 3, 28, 12).astimezone(given_in)
    assert domain.elapsed_days(start, end) == D(23) / D(24)


T0 = utc(2027, 1, 4, 10, 0)


@pytest.mark.parametrize(
    ("segments", "at", "delivered"),
    [
        pytest.param([(T0, D("0.4"))], T0 + timedelta(days=10), D(4), id="one rate for 10 days"),
        pytest.param([(T0, D("0.4"))], T0 + timedelta(hours=36), D("0.6"), id="fractional days"),
        pytest.param(
            [(T0, D("0.4")), (T0 + timedelta(days=10), D("0.8"))], T0 + timedelta(days=15), D(8), id="dose change between fills"
        ),
        pytest.param(
            [(T0 + timedelta(days=10), D("0.8")), (T0, D("0.4"))], T0 + timedelta(days=15), D(8), id="segments in any order"
        ),
        pytest.param(
            [(T0 - timedelta(days=30), D("0.4"))],
            T0 + timedelta(days=10),
            D(4),
            id="a program from before the fill counts from it",
        ),
        pytest.param(
            [(T0 - timedelta(days=30), D("0.2")), (T0 - timedelta(days=5), D("0.4"))],
            T0 + timedelta(days=10),
            D(4),
            id="only the program in force at the fill counts",
        ),
        pytest.param(
            [(T0, D("0.4")), (T0 + timedelta(days=20), D("0.8"))], T0 + timedelta(days=10), D(4), id="a later program not yet"
        ),
        pytest.param([(T0, D(0))], T0 + timedelta(days=10), D(0), id="zero rate"),
    ],
)
def test_delivered_volume_is_the_sum_of_rate_times_exact_days(
    segments: list[tuple[datetime, Decimal]], at: datetime, delivered: Decimal
) -> None:
    assert domain.delivered_ml(T0, [domain.Segment(s, r) for s, r in segments], at) == delivered


@pytest.mark.parametrize(
    ("volume_after_fill", "days", "volume"),
    [
        (D(40), 30, D(28)),
        (D(40), D("2.5"), D(39)),
        (D(40), 100, D(0)),  # exactly empty
        (D(5), 100, D(0)),  # never below zero: "reaching zero is empty"
    ],
)
def test_volume_is_fill_minus_delivered_and_never_below_zero(
    volume_after_fill: Decimal, days: Decimal | int, volume: Decimal
) -> None:
    at = T0 + timedelta(days=float(days))
    assert domain.volume_at(volume_after_fill, T0, [domain.Segment(T0, EXAMPLE_RATE)], at) == volume


# ============================================================================= alarm date


@pytest.mark.parametrize(
    ("volume", "alarm", "rate", "days"),
    [
        pytest.param(D(40), D(2), D("0.4"), 95, id="worked example"),
        pytest.param(D(10), D(2), D(3), 2, id="fractional days round down (2.67)"),
        pytest.param(D(40), D(2), D("0.39"), 97, id="97.4 days round down"),
        pytest.param(D("10.4"), D(2), D("0.4"), 21, id="exactly 21 days"),
        pytest.param(D("10.39"), D(2), D("0.4"), 20, id="a hair under 21 days"),
        pytest.param(D(2), D(2), D("0.4"), 0, id="at the alarm volume"),
        pytest.param(D("1.5"), D(2), D("0.4"), 0, id="below the alarm volume"),
        pytest.param(D(0), D(2), D("0.4"), 0, id="empty"),
        pytest.param(D(40), D(0), D("0.4"), 100, id="no alarm volume"),
        pytest.param(D(40), D(2), D(0), None, id="zero rate: no alarm"),
        pytest.param(D("1.5"), D(2), D(0), 0, id="zero rate below the alarm volume: already alarming"),
    ],
)
def test_days_until_alarm_round_down_so_no_date_is_late(volume: Decimal, alarm: Decimal, rate: Decimal, days: int | None) -> None:
    assert domain.days_until_alarm(volume, alarm, rate) == days


def test_days_until_alarm_refuse_a_negative_rate() -> None:
    with pytest.raises(ValueError):
        domain.days_until_alarm(D(40), D(2), D("-0.4"))


def test_worked_example_alarms_on_9_april() -> None:
    assert domain.alarm_date(EXAMPLE_FILLED_AT, D(40), D(2), EXAMPLE_RATE, ZoneInfo("UTC")) == date(2027, 4, 9)


@pytest.mark.parametrize(
    ("zone", "alarm_on"),
    [
        # 2027-01-04 23:30 UTC is still the 4th in Los Angeles, already the 5th in Tokyo.
        ("UTC", date(2027, 4, 9)),
        ("America/Los_Angeles", date(2027, 4, 9)),
        ("Asia/Tokyo", date(2027, 4, 10)),
    ],
)
def test_alarm_date_counts_from_the_clinic_local_date_of_the_fill(zone: str, alarm_on: date) -> None:
    assert domain.alarm_date(utc(2027, 1, 4, 23, 30), D(40), D(2), EXAMPLE_RATE, ZoneInfo(zone)) == alarm_on


@pytest.mark.parametrize("volume", [D(2), D("1.99"), D(0)])
def test_alarm_date_is_the_fill_date_at_or_below_the_alarm_volume(volume: Decimal) -> None:
    assert domain.alarm_date(EXAMPLE_FILLED_AT, volume, D(2), EXAMPLE_RATE, LONDON) == date(2027, 1, 4)


def test_zero_rate_has_no_alarm_date() -> None:
    assert domain.alarm_date(EXAMPLE_FILLED_AT, D(40), D(2), D(0), LONDON) is None


# Fall-back changes: 2027-10-31 in the UK (02:00 BST -> 01:00 GMT), 2027-11-07 in New York.
# Filled just after midnight before the change, an exact number of days later the true
# moment is 23:30 on the previous local day: `date(t) + days` would be one day late.
@pytest.mark.parametrize("in_clinic_zone", [False, True], ids=["given in UTC", "given in the clinic zone"])
@pytest.mark.parametrize(
    ("tz", "filled_at", "contract_date", "alarm_on"),
    [
        pytest.param(LONDON, local(LONDON, 2027, 10, 20, 0, 30), date(2027, 11, 9), date(2027, 11, 8), id="Europe/London"),
        pytest.param(
            NEW_YORK, local(NEW_YORK, 2027, 10, 28, 0, 30), date(2027, 11, 17), date(2027, 11, 16), id="America/New_York"
        ),
    ],
)
def test_alarm_date_is_not_late_when_clocks_go_back(
    tz: ZoneInfo, filled_at: datetime, contract_date: date, alarm_on: date, in_clinic_zone: bool
) -> None:
    volume, alarm, rate = D(22), D(2), D(1)  # exactly 20 days to the alarm volume
    true_moment = filled_at + timedelta(days=20)  # UTC arithmetic: real time
    assert true_moment.astimezone(tz).date() == alarm_on
    assert filled_at.astimezone(tz).date() + timedelta(days=domain.days_until_alarm(volume, alarm, rate) or 0) == contract_date
    anchor = filled_at.astimezone(tz) if in_clinic_zone else filled_at
    assert domain.alarm_date(anchor, volume, alarm, rate, tz) == alarm_on


def test_alarm_date_keeps_the_contract_date_when_clocks_go_forward() -> None:
    # 2027-03-28 the UK springs forward: the true moment lands after midnight, the contract before it.
    filled_at = local(LONDON, 2027, 3, 20, 23, 30)
    assert domain.alarm_date(filled_at, D(12), D(2), D(1), LONDON) == date(2027, 3, 30)


def _offset_changes(tz: ZoneInfo, year: int) -> list[datetime]:
    """The UTC hours in `year` at which the zone's offset changes (its DST transitions)."""
    changes = []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    previous = moment.astimezone(tz).utcoffset()
    while moment.year == year:
        moment += timedelta(hours=1)
        offset = moment.astimezone(tz).utcoffset()
        if offset != previous:
            changes.append(moment)
        previous = offset
    return changes


# (volume, alarm, rate): exact whole days, a hair under and over them, long and thirds.
GRID_RESERVOIRS = [
    (D(22), D(2), D(1)),
    (D("21.99"), D(2), D(1)),
    (D("22.01"), D(2), D(1)),
    (D(40), D(2), D("0.4")),
    (D(10), D(2), D(1) / D(3)),
    (D(9), D(3), D("0.25")),
]


@pytest.mark.parametrize(
    "zone", ["Europe/London", "America/New_York", "Australia/Sydney", "America/Santiago", "Pacific/Chatham", "Asia/Kolkata"]
)
def test_alarm_date_is_never_after_the_local_date_the_volume_reaches_the_alarm_volume(zone: str) -> None:
    """Over fill times around each clock change of 2027 (every local minute near midnight,
    and a spread through the day) and several reservoirs, the alarm date is never after the
    local date of the exact moment, and departs from DESIGN's `date(t) + days` only by
    being one day earlier."""
    tz = ZoneInfo(zone)
    changes = _offset_changes(tz, 2027) or [utc(2027, 6, 1)]
    checked = earlier = 0
    for change in changes:
        first_day = (change - timedelta(days=100)).astimezone(tz).date()
        for day in (first_day + timedelta(days=n) for n in range(101)):
            times = [time(0, 0), time(0, 1), time(0, 30), time(0, 59), time(1, 30), time(12, 0), time(23, 59)]
            times.append(time((day.toordinal() * 7) % 24, (day.toordinal() * 13) % 60))
            for wall in times:
                filled_at = datetime.combine(day, wall, tzinfo=tz).astimezone(UTC)
                for volume, alarm, rate in GRID_RESERVOIRS:
                    exact_days = (Fraction(volume) - Fraction(alarm)) / Fraction(rate)
                    # Rounding the moment down to the microsecond can only make this bound stricter.
                    true_moment = filled_at + timedelta(microseconds=math.floor(exact_days * 86_400_000_000))
                    true_on = true_moment.astimezone(tz).date()
                    contract_on = filled_at.astimezone(tz).date() + timedelta(days=math.floor(exact_days))
                    alarm_on = domain.alarm_date(filled_at, volume, alarm, rate, tz)
                    assert alarm_on is not None
                    assert alarm_on <= true_on, (zone, filled_at, volume, rate)
                    assert alarm_on in (contract_on, contract_on - timedelta(days=1)), (zone, filled_at, volume, rate)
                    checked += 1
                    earlier += alarm_on < contract_on
    assert checked >= 100 * 8 * len(GRID_RESERVOIRS)
    # The grid reaches the hazard it is for: where clocks go back, the contract date is late.
    assert (earlier > 0) == (len(changes) > 1)


# ============================================================================= refill-by


@pytest.mark.parametrize(
    ("alarm_on", "margin", "last_visit_on", "interval", "filled_on", "refill_by"),
    [
        pytest.param(
            date(2027, 4, 9), 3, date(2027, 1, 4), 90, date(2027, 1, 4), date(2027, 4, 4), id="maintenance: 90 days bind"
        ),
        pytest.param(date(2027, 4, 9), 3, date(2027, 1, 4), 30, date(2027, 1, 4), date(2027, 2, 3), id="titration: 30 days bind"),
        pytest.param(
            date(2027, 2, 20), 3, date(2027, 1, 4), 90, date(2027, 1, 4), date(2027, 2, 17), id="alarm minus margin binds"
        ),
        pytest.param(date(2027, 2, 20), 5, date(2027, 1, 4), 90, date(2027, 1, 4), date(2027, 2, 15), id="a 5-day margin"),
        pytest.param(date(2027, 2, 20), 0, date(2027, 1, 4), 90, date(2027, 1, 4), date(2027, 2, 20), id="no margin"),
        pytest.param(
            date(2028, 1, 1), 3, date(2027, 5, 1), 90, date(2027, 1, 4), date(2027, 7, 3), id="180 days from the fill bind"
        ),
        pytest.param(None, 3, date(2027, 1, 4), 90, date(2027, 1, 4), date(2027, 4, 4), id="no alarm: interval"),
        pytest.param(None, 3, date(2027, 5, 1), 90, date(2027, 1, 4), date(2027, 7, 3), id="no alarm: ceiling"),
    ],
)
def test_refill_by_is_the_earliest_of_alarm_margin_interval_and_ceiling(
    alarm_on: date | None, margin: int, last_visit_on: date, interval: int, filled_on: date, refill_by: date
) -> None:
    assert (
        domain.refill_by_date(
            alarm_on=alarm_on, margin_days=margin, last_visit_on=last_visit_on, interval_days=interval, filled_on=filled_on
        )
        == refill_by
    )


def test_stability_ceiling_is_180_days() -> None:
    assert domain.STABILITY_CEILING_DAYS == 180


# ============================================================================= schedule


def example_schedule(*, interval_days: int, segments: list[domain.Segment] | None = None, **kwargs: object) -> domain.Schedule:
    return domain.schedule(
        fill=domain.Fill(EXAMPLE_FILLED_AT, D(40)),
        segments=segments or [domain.Segment(EXAMPLE_FILLED_AT, EXAMPLE_RATE)],
        alarm_ml=D(2),
        tz=LONDON,
        margin_days=3,
        interval_days=interval_days,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("phase", "interval_days", "refill_by"),
    [("maintenance", 90, date(2027, 4, 4)), ("titration", 30, date(2027, 2, 3))],
)
def test_worked_example_schedule(phase: str, interval_days: int, refill_by: date) -> None:
    sched = example_schedule(interval_days=interval_days)
    assert (sched.volume_ml, sched.rate_ml_per_day, sched.alarm_on, sched.refill_by) == (
        D(40),
        D("0.4"),
        date(2027, 4, 9),
        refill_by,
    )


def test_schedule_after_a_dose_change_counts_from_the_change() -> None:
    # 10 days at 0.4 mL/day leave 36 mL; then 0.8 mL/day: floor(34 / 0.8) = 42 days.
    changed_at = EXAMPLE_FILLED_AT + timedelta(days=10)
    sched = example_schedule(
        interval_days=30, segments=[domain.Segment(EXAMPLE_FILLED_AT, EXAMPLE_RATE), domain.Segment(changed_at, D("0.8"))]
    )
    assert sched.anchor_at == changed_at
    assert sched.volume_ml == D(36)
    assert sched.rate_ml_per_day == D("0.8")
    assert sched.alarm_on == date(2027, 1, 14) + timedelta(days=42)
    # the programming visit restarts the interval: 14 January + 30 days
    assert sched.refill_by == date(2027, 2, 13)


def test_schedule_counts_the_stability_ceiling_from_the_fill_not_the_last_change() -> None:
    changed_at = utc(2027, 5, 1, 10)
    sched = example_schedule(
        interval_days=90,
        segments=[domain.Segment(EXAMPLE_FILLED_AT, D("0.02")), domain.Segment(changed_at, D("0.02"))],
    )
    assert sched.refill_by == date(2027, 1, 4) + timedelta(days=180) == date(2027, 7, 3)


def test_schedule_with_zero_rate_has_no_alarm_but_still_a_refill_by_date() -> None:
    sched = example_schedule(interval_days=90, segments=[domain.Segment(EXAMPLE_FILLED_AT, D(0))])
    assert sched.alarm_on is None
    assert sched.refill_by == date(2027, 4, 4)


def test_schedule_reports_the_volume_at_a_later_moment_without_moving_the_dates() -> None:
    sched = example_schedule(interval_days=90, at=EXAMPLE_FILLED_AT + timedelta(days=30, hours=12))
    assert sched.volume_ml == D("27.8")
    assert (sched.alarm_on, sched.refill_by) == (date(2027, 4, 9), date(2027, 4, 4))


def test_schedule_with_a_fill_at_the_alarm_volume_alarms_on_the_fill_date() -> None:
    sched = domain.schedule(
        fill=domain.Fill(EXAMPLE_FILLED_AT, D(2)),
        segments=[domain.Segment(EXAMPLE_FILLED_AT, EXAMPLE_RATE)],
        alarm_ml=D(2),
        tz=LONDON,
        margin_days=3,
        interval_days=90,
    )
    assert sched.alarm_on == date(2027, 1, 4)
    assert sched.refill_by == date(2027, 1, 1)


def test_schedule_needs_a_program() -> None:
    with pytest.raises(ValueError):
        domain.schedule(
            fill=domain.Fill(EXAMPLE_FILLED_AT, D(40)), segments=[], alarm_ml=D(2), tz=LONDON, margin_days=3, interval_days=90
        )


# ============================================================================= discrepancy


@pytest.mark.parametrize(
    ("withdrawn", "expected", "delivered", "accuracy", "discrepancy", "flagged"),
    [
        pytest.param(D(20), D(20), D(20), D("14.5"), D(0), False, id="on target"),
        # band 14.5 % of 20 mL = 2.90 mL: only the 2 mL rule can flag these
        pytest.param(D(22), D(20), D(20), D("14.5"), D(2), False, id="2.00 mL over: not flagged"),
        pytest.param(D("22.01"), D(20), D(20), D("14.5"), D("2.01"), True, id="2.01 mL over: flagged"),
        pytest.param(D(18), D(20), D(20), D("14.5"), D(-2), False, id="2.00 mL under: not flagged"),
        pytest.param(D("17.99"), D(20), D(20), D("14.5"), D("-2.01"), True, id="2.01 mL under: flagged"),
        # band 14.5 % of 10 mL = 1.45 mL: only the band can flag these
        pytest.param(D("31.45"), D(30), D(10), D("14.5"), D("1.45"), False, id="at the SynchroMed band"),
        pytest.param(D("31.46"), D(30), D(10), D("14.5"), D("1.46"), True, id="over the SynchroMed band"),
        pytest.param(D("28.54"), D(30), D(10), D("14.5"), D("-1.46"), True, id="under the SynchroMed band"),
        pytest.param(D("31.50"), D(30), D(10), D(15), D("1.50"), False, id="at the Prometra band"),
        pytest.param(D("31.51"), D(30), D(10), D(15), D("1.51"), True, id="over the Prometra band"),
    ],
)
def test_discrepancy_is_flagged_over_2_ml_or_over_the_accuracy_band(
    withdrawn: Decimal, expected: Decimal, delivered: Decimal, accuracy: Decimal, discrepancy: Decimal, flagged: bool
) -> None:
    result = domain.residual_discrepancy(
        withdrawn_ml=withdrawn, expected_residual_ml=expected, delivered_since_fill_ml=delivered, accuracy_pct=accuracy
    )
    assert (result.discrepancy_ml, result.flagged) == (discrepancy, flagged)


def test_discrepancy_band_is_the_accuracy_share_of_the_volume_delivered_since_the_fill() -> None:
    result = domain.residual_discrepancy(
        withdrawn_ml=D(30), expected_residual_ml=D(30), delivered_since_fill_ml=D(10), accuracy_pct=D("14.5")
    )
    assert result.band_ml == D("1.45")


@pytest.mark.parametrize(("expected", "quantized"), [(D("27.8049"), D("27.80")), (D("27.8051"), D("27.81")), (D(28), D("28.00"))])
def test_expected_residual_is_quantized_to_a_hundredth_of_a_ml(expected: Decimal, quantized: Decimal) -> None:
    result = domain.residual_discrepancy(
        withdrawn_ml=D(28), expected_residual_ml=expected, delivered_since_fill_ml=D(12), accuracy_pct=D("14.5")
    )
    assert result.expected_residual_ml == quantized
    assert str(result.expected_residual_ml) == str(quantized)
    assert result.discrepancy_ml == D(28) - quantized


def test_discrepancy_just_over_the_exact_accuracy_band_is_flagged() -> None:
    result = domain.residual_discrepancy(
        withdrawn_ml=D("5.15"), expected_residual_ml=D(5), delivered_since_fill_ml=D(1), accuracy_pct=D("14.5")
    )
    assert result.flagged


# ============================================================================= dose-change safety

NOW = utc(2027, 3, 1, 12, 0)
POLICY = domain.DosePolicy(marketed_concentrations_mcg_per_ml=(D(50), D(500), D(1000), D(2000)))
SYNCHROMED_RANGE = (D(50), D(2000))
PROMETRA_RANGE = (D(500), D(2000))
HUNDRED, FIFTY = D(100), D(50)


def context(
    *,
    phase: Phase = Phase.TITRATION,
    origin: Origin = Origin.SPINAL,
    age_years: int = 40,
    implanted_at: datetime = NOW - timedelta(days=30),
    previous: Decimal | None = HUNDRED,
    last_increase_at: datetime | None = None,
    screening_dose: Decimal | None = FIFTY,
    screening_effect_hours: Decimal | None = None,
    concentration_range: tuple[Decimal, Decimal] | None = SYNCHROMED_RANGE,
) -> domain.DoseContext:
    return domain.DoseContext(
        phase=phase,
        origin=origin,
        age_years=age_years,
        implanted_at=implanted_at,
        previous_dose_mcg_per_day=previous,
        last_increase_at=last_increase_at,
        screening_dose_mcg=screening_dose,
        screening_effect_hours=screening_effect_hours,
        concentration_range_mcg_per_ml=concentration_range,
    )


def codes(
    dose: Decimal | int | str,
    *,
    concentration: Decimal | int = 500,
    effective_at: datetime = NOW,
    policy: domain.DosePolicy = POLICY,
    **ctx: object,
) -> list[Rule]:
    warnings = domain.dose_change_warnings(
        dose_mcg_per_day=D(dose),
        concentration_mcg_per_ml=D(concentration),
        effective_at=effective_at,
        context=context(**ctx),  # type: ignore[arg-type]
        policy=policy,
    )
    return [w.code for w in warnings]


@pytest.mark.parametrize(
    ("phase", "origin", "age", "allowed", "refused"),
    [
        pytest.param(Phase.TITRATION, Origin.SPINAL, 40, 130, 131, id="titration spinal 30 %"),
        pytest.param(Phase.TITRATION, Origin.CEREBRAL, 40, 115, 116, id="titration cerebral 15 %"),
        pytest.param(Phase.TITRATION, Origin.SPINAL, 17, 115, 116, id="titration under 18: 15 %"),
        pytest.param(Phase.TITRATION, Origin.SPINAL, 18, 130, 131, id="titration at 18: adult 30 %"),
        pytest.param(Phase.MAINTENANCE, Origin.SPINAL, 40, 140, 141, id="maintenance spinal 40 %"),
        pytest.param(Phase.MAINTENANCE, Origin.CEREBRAL, 40, 120, 121, id="maintenance cerebral 20 %"),
        pytest.param(Phase.MAINTENANCE, Origin.SPINAL, 17, 120, 121, id="maintenance under 18: 20 %"),
    ],
)
def test_increase_over_the_phase_and_origin_limit_must_be_acknowledged(
    phase: Phase, origin: Origin, age: int, allowed: int, refused: int
) -> None:
    assert codes(allowed, phase=phase, origin=origin, age_years=age) == []
    assert codes(refused, phase=phase, origin=origin, age_years=age) == [Rule.INCREASE_OVER_LIMIT]


def test_maintenance_increase_limits_are_settings() -> None:
    policy = domain.DosePolicy(
        marketed_concentrations_mcg_per_ml=POLICY.marketed_concentrations_mcg_per_ml,
        maintenance_increase_limit_spinal_pct=D(25),
        maintenance_increase_limit_cerebral_pct=D(10),
    )
    assert codes(126, phase=Phase.MAINTENANCE, policy=policy) == [Rule.INCREASE_OVER_LIMIT]
    assert codes(111, phase=Phase.MAINTENANCE, origin=Origin.CEREBRAL, policy=policy) == [Rule.INCREASE_OVER_LIMIT]


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("origin", list(Origin))
@pytest.mark.parametrize(("dose", "tripped"), [("80", False), ("79.9", True), ("0", True)])
def test_decrease_over_20_percent_must_be_acknowledged(phase: Phase, origin: Origin, dose: str, tripped: bool) -> None:
    assert codes(dose, phase=phase, origin=origin) == ([Rule.DECREASE_OVER_LIMIT] if tripped else [])


@pytest.mark.parametrize("phase", list(Phase))
def test_any_increase_from_a_stopped_pump_must_be_acknowledged(phase: Phase) -> None:
    # From 0 mcg/day every increase is more than 30 % (or 40 %): DESIGN's increase_over_limit.
    assert Rule.INCREASE_OVER_LIMIT in codes(500, previous=D(0), phase=phase)


def test_limit_message_names_the_change_and_the_limit() -> None:
    [warning] = domain.dose_change_warnings(
        dose_mcg_per_day=D(131),
        concentration_mcg_per_ml=D(500),
        effective_at=NOW,
        context=context(),
        policy=POLICY,
    )
    assert "31 %" in warning.message and "30 %" in warning.message


@pytest.mark.parametrize(
    ("dose", "implanted_ago", "last_increase_ago", "tripped"),
    [
        pytest.param("110", timedelta(hours=23, minutes=59), None, True, id="increase 23:59 after implant"),
        pytest.param("110", timedelta(hours=24), None, False, id="increase 24 h after implant"),
        pytest.param("110", timedelta(days=30), timedelta(hours=23, minutes=59), True, id="23:59 after the previous increase"),
        pytest.param("110", timedelta(days=30), timedelta(hours=24), False, id="24 h after the previous increase"),
        pytest.param("90", timedelta(hours=1), timedelta(hours=1), False, id="a decrease is never too soon"),
        pytest.param("100", timedelta(hours=1), timedelta(hours=1), False, id="an unchanged dose is never too soon"),
    ],
)
def test_increase_within_24_hours_of_implant_or_of_the_previous_increase_must_be_acknowledged(
    dose: str, implanted_ago: timedelta, last_increase_ago: timedelta | None, tripped: bool
) -> None:
    last_increase_at = NOW - last_increase_ago if last_increase_ago else None
    found = codes(dose, implanted_at=NOW - implanted_ago, last_increase_at=last_increase_at)
    assert found == ([Rule.INCREASE_TOO_SOON] if tripped else [])


def test_first_dose_after_implant_is_not_an_increase() -> None:
    assert codes(100, previous=None, implanted_at=NOW - timedelta(hours=1)) == []


@pytest.mark.parametrize("given_in", [UTC, LONDON], ids=["given in UTC", "given in the clinic zone"])
def test_increase_23_real_hours_after_implant_across_a_clock_change_is_too_soon(given_in: tzinfo) -> None:
    # noon to noon across the UK's spring-forward change is 23 hours
    implanted_at = local(LONDON, 2027, 3, 27, 12).astimezone(given_in)
    effective_at = local(LONDON, 2027, 3, 28, 12).astimezone(given_in)
    assert codes(110, effective_at=effective_at, implanted_at=implanted_at) == [Rule.INCREASE_TOO_SOON]


@pytest.mark.parametrize(("dose", "tripped"), [("1000", False), ("1000.001", True), ("1200", True)])
def test_dose_above_1000_mcg_per_day_must_be_acknowledged(dose: str, tripped: bool) -> None:
    assert codes(dose, previous=D(950), phase=Phase.MAINTENANCE) == ([Rule.DOSE_ABOVE_1000] if tripped else [])


def test_dose_warning_threshold_is_a_setting() -> None:
    policy = domain.DosePolicy(
        marketed_concentrations_mcg_per_ml=POLICY.marketed_concentrations_mcg_per_ml, dose_warning_mcg_per_day=D(800)
    )
    assert codes(801, previous=D(750), policy=policy) == [Rule.DOSE_ABOVE_1000]


@pytest.mark.parametrize(
    ("dose", "screening_dose", "effect_hours", "tripped"),
    [
        pytest.param("100", D(50), None, False, id="2x the screening dose"),
        pytest.param("50", D(50), None, False, id="1x the screening dose"),
        pytest.param("50", D(50), D(9), False, id="1x after a long effect"),
        pytest.param("100", D(50), D(9), False, id="2x after a long effect"),
        pytest.param("75", D(50), None, True, id="1.5x"),
        pytest.param("150", D(50), None, True, id="3x"),
        pytest.param("49", D(50), None, True, id="just under 1x"),
        pytest.param("200", D(100), None, False, id="2x a 100 mcg screening"),
        pytest.param("100", None, None, True, id="no effective screening on record"),
    ],
)
def test_first_dose_not_1x_or_2x_the_effective_screening_dose_must_be_acknowledged(
    dose: str, screening_dose: Decimal | None, effect_hours: Decimal | None, tripped: bool
) -> None:
    found = codes(dose, previous=None, screening_dose=screening_dose, screening_effect_hours=effect_hours)
    assert found == ([Rule.INITIAL_DOSE_UNUSUAL] if tripped else [])


@pytest.mark.parametrize(
    ("effect_hours", "expected"),
    [(None, (D(100), D(50))), (D(8), (D(100), D(50))), (D("8.1"), (D(50), D(100)))],
)
def test_initial_dose_prefers_2x_unless_the_screening_effect_lasted_over_8_hours(
    effect_hours: Decimal | None, expected: tuple[Decimal, ...]
) -> None:
    assert domain.initial_doses_expected(D(50), effect_hours) == expected


def test_later_changes_are_not_checked_against_the_screening_dose() -> None:
    assert codes(110, previous=D(100), screening_dose=D(50)) == []


@pytest.mark.parametrize(
    ("concentration", "pump_range", "tripped"),
    [
        pytest.param(500, SYNCHROMED_RANGE, False, id="500 marketed"),
        pytest.param(1000, SYNCHROMED_RANGE, False, id="1000 marketed"),
        pytest.param(2000, SYNCHROMED_RANGE, False, id="2000 marketed"),
        pytest.param(50, SYNCHROMED_RANGE, False, id="50 marketed, in SynchroMed range"),
        pytest.param(750, SYNCHROMED_RANGE, True, id="750 diluted"),
        pytest.param(3000, SYNCHROMED_RANGE, True, id="3000 over the range"),
        pytest.param(50, PROMETRA_RANGE, True, id="50 marketed but under the Prometra range"),
        pytest.param(500, PROMETRA_RANGE, False, id="500 in the Prometra range"),
        pytest.param(3000, (D(50), D(3000)), True, id="3000 in a range but not marketed"),
        pytest.param(750, None, True, id="no labelled range: marketed strengths still apply"),
    ],
)
def test_concentration_not_marketed_or_outside_the_pump_range_must_be_acknowledged(
    concentration: int, pump_range: tuple[Decimal, Decimal] | None, tripped: bool
) -> None:
    found = codes(100, concentration=concentration, concentration_range=pump_range)
    assert found == ([Rule.CONCENTRATION_UNUSUAL] if tripped else [])


def test_every_tripped_rule_is_reported_in_table_order() -> None:
    found = codes(
        1200,
        concentration=750,
        previous=D(800),
        implanted_at=NOW - timedelta(days=30),
        last_increase_at=NOW - timedelta(hours=2),
    )
    assert found == [Rule.INCREASE_OVER_LIMIT, Rule.INCREASE_TOO_SOON, Rule.DOSE_ABOVE_1000, Rule.CONCENTRATION_UNUSUAL]


def test_rule_codes_are_the_ones_design_names() -> None:
    assert {r.value for r in Rule} == {
        "increase_over_limit",
        "decrease_over_limit",
        "increase_too_soon",
        "dose_above_1000",
        "initial_dose_unusual",
        "concentration_unusual",
    }


@pytest.mark.parametrize(
    ("birth", "on", "age"),
    [
        (date(2009, 6, 15), date(2027, 6, 14), 17),
        (date(2009, 6, 15), date(2027, 6, 15), 18),
        (date(2008, 2, 29), date(2026, 2, 28), 17),
        (date(2008, 2, 29), date(2026, 3, 1), 18),
    ],
)
def test_age_in_years_turns_on_the_birthday(birth: date, on: date, age: int) -> None:
    assert domain.age_in_years(birth, on) == age


# ============================================================================= screening

GIVEN_AT = utc(2027, 1, 10, 9)


@pytest.mark.parametrize("dose", [25, 50, 75, 100])
def test_screening_accepts_the_label_doses(dose: int) -> None:
    assert domain.screening_problems(dose_mcg=D(dose), given_at=GIVEN_AT, previous_given_at=[]) == {}


@pytest.mark.parametrize("dose", [0, 10, 30, 60, 125, 150])
def test_screening_refuses_any_other_dose(dose: int) -> None:
    assert set(domain.screening_problems(dose_mcg=D(dose), given_at=GIVEN_AT, previous_given_at=[])) == {"dose_mcg"}


@pytest.mark.parametrize(
    ("previous", "refused"),
    [
        pytest.param([GIVEN_AT - timedelta(hours=24)], False, id="24 h after the previous"),
        pytest.param([GIVEN_AT - timedelta(hours=23, minutes=59)], True, id="23:59 after the previous"),
        pytest.param([GIVEN_AT + timedelta(hours=23)], True, id="23 h before a later dose"),
        pytest.param([GIVEN_AT - timedelta(days=2), GIVEN_AT - timedelta(days=1)], False, id="third dose"),
        pytest.param(
            [GIVEN_AT - timedelta(days=3), GIVEN_AT - timedelta(days=2), GIVEN_AT - timedelta(days=1)], True, id="fourth dose"
        ),
    ],
)
def test_screening_doses_are_24_hours_apart_and_at_most_three(previous: list[datetime], refused: bool) -> None:
    problems = domain.screening_problems(dose_mcg=D(75), given_at=GIVEN_AT, previous_given_at=previous)
    assert set(problems) == ({"given_at"} if refused else set())


@pytest.mark.parametrize("given_in", [UTC, LONDON], ids=["given in UTC", "given in the clinic zone"])
def test_screening_doses_23_real_hours_apart_across_a_clock_change_are_refused(given_in: tzinfo) -> None:
    problems = domain.screening_problems(
        dose_mcg=D(75),
        given_at=local(LONDON, 2027, 3, 28, 9).astimezone(given_in),
        previous_given_at=[local(LONDON, 2027, 3, 27, 9).astimezone(given_in)],
    )
    assert set(problems) == {"given_at"}
