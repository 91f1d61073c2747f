"""Load data: N clinics, patients and pumps with realistic histories, by bulk inserts.

    DATABASE_URL=postgres://app:app@127.0.0.1:5432/app_bench SECRET_KEY=x \\
        .venv/bin/python manage.py migrate
    DATABASE_URL=postgres://app:app@127.0.0.1:5432/app_bench SECRET_KEY=x \\
        .venv/bin/python -m bench.generate --pumps 100000 --clinics 50 --seed 1

Every pump is implanted after a positive screening trial, programmed, titrated, then
refilled every one to three months up to `now`, exactly as `pumps.services` would have
stored it: the alarm and refill-by dates, expected residuals and discrepancies are
computed with `pumps.domain`, the same pure functions the services call, only without a
query per pump (the services would take hours for 100,000 pumps). No messages are
planned: the planner has its own benchmark (`bench/reminders.py`, which seeds with this).
The same `--seed` and `--now` give the same data. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time as clock
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from pumps.models import PumpModel

ROOT = Path(__file__).resolve().parent.parent

TIME_ZONES = [
    "Europe/London",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/Madrid",
    "Australia/Sydney",
    "UTC",
    "Asia/Tokyo",
]
# A landline prefix per zone; six digits follow, which phonenumbers accepts as valid numbers.
PHONE_PREFIX = {
    "Europe/London": "+442079",
    "America/New_York": "+12125",
    "America/Chicago": "+13125",
    "America/Los_Angeles": "+12135",
    "Europe/Madrid": "+34915",
    "Australia/Sydney": "+61292",
    "UTC": "+442079",
    "Asia/Tokyo": "+81335",
}
SPANISH_SHARE = {"Europe/Madrid": 0.9, "America/Los_Angeles": 0.35, "America/Chicago": 0.2, "America/New_York": 0.15}
MODEL_WEIGHTS = {"8637-40": 40, "8637-20": 30, "13827": 15, "16827": 15}
MARKETED_CONCENTRATIONS = (Decimal(500), Decimal(1000), Decimal(2000))
GIVEN_NAMES = ["Alex", "Sam", "Maria", "José", "Priya", "Chen", "Fatima", "John", "Aiko", "Olivia", "Noah", "Lucía"]
ROLES = ("clinician", "nurse", "coordinator", "viewer")
TENTH = Decimal("0.1")
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Options:
    pumps: int
    clinics: int
    now: datetime
    seed: int = 1
    # Implants spread uniformly over this many years before `now`.
    years: int = 5
    # Patients whose history stops early (missed their last visits), by up to missed_days.
    missed_share: float = 0.02
    missed_days: int = 60
    # Names, MRNs and serial numbers start with this, so a second run with another tag can
    # go into the same database.
    tag: str = "L"
    batch: int = 1000
    # Write with PostgreSQL's COPY (None: whenever the database is PostgreSQL), else bulk_create.
    copy: bool | None = None


@dataclass
class Generated:
    clinics: int = 0
    users: int = 0
    memberships: int = 0
    patients: int = 0
    caregivers: int = 0
    screenings: int = 0
    pumps: int = 0
    programs: int = 0
    refills: int = 0
    events: int = 0
    blocks: int = 0
    # Not rows: what the data looks like.
    active: int = 0
    ended: int = 0
    flagged: int = 0
    overdue: int = 0
    seconds: float = 0.0
    # This process's CPU time (user + system): steadier than wall time on a shared machine;
    # the database server's share is not in it.
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0

    ROW_FIELDS = (
        "clinics",
        "users",
        "memberships",
        "patients",
        "caregivers",
        "screenings",
        "pumps",
        "programs",
        "refills",
        "events",
        "blocks",
    )

    @property
    def rows(self) -> int:
        return sum(getattr(self, name) for name in self.ROW_FIELDS)

    def summary(self) -> str:
        counts = ", ".join(f"{getattr(self, f.name):,} {f.name}" for f in fields(self) if f.name in self.ROW_FIELDS)
        return (
            f"{self.rows:,} rows in {self.seconds:.1f} s ({self.rows / max(self.seconds, 1e-9):,.0f} rows/s; "
            f"{self.cpu_seconds:.1f} s CPU in this process), "
            f"peak RSS {self.peak_rss_mb:.0f} MB: {counts}; {self.active:,} active pumps ({self.overdue:,} overdue), "
            f"{self.ended:,} explanted or replaced, {self.flagged:,} flagged residual discrepancies"
        )


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- one pump's history


@dataclass
class ProgramRow:
    effective_at: datetime
    dose: Decimal
    previous: Decimal | None
    reason: str


@dataclass
class RefillRow:
    performed_at: datetime
    withdrawn_ml: Decimal
    added_ml: Decimal
    initial: bool
    expected_ml: Decimal | None
    discrepancy: Any  # domain.Discrepancy | None
    alarm_on: date | None
    refill_by: date


@dataclass
class History:
    """One pump's recorded history and the dates `recompute_schedule` would store."""

    implanted_at: datetime
    model: Any  # PumpModel
    concentration: Decimal
    programs: list[ProgramRow] = field(default_factory=list)
    refills: list[RefillRow] = field(default_factory=list)
    stable_at: datetime | None = None
    ended_at: datetime | None = None
    alarm_on: date | None = None
    refill_by: date | None = None


@dataclass(frozen=True)
class ClinicPolicy:
    tz: ZoneInfo
    margin_days: int
    titration_days: int
    maintenance_days: int


def at_local(day: date, hour: int, minute: int, tz: ZoneInfo) -> datetime:
    """A clinic-local wall-clock moment, stored in UTC."""
    return datetime.combine(day, time(hour, minute), tzinfo=tz).astimezone(UTC)


def quantize(value: Decimal, step: Decimal = CENT) -> Decimal:
    return value.quantize(step, rounding=ROUND_HALF_UP)


def simulate(
    rng: random.Random,
    *,
    model: PumpModel,
    policy: ClinicPolicy,
    implanted_at: datetime,
    stop_at: datetime,
    first_dose: Decimal,
    cautious: bool,
    titrate: bool,
) -> History:
    """Program, titrate and refill one pump from its implant until `stop_at`.

    The arithmetic is `pumps.domain`'s, applied as `services.preview_refill` (a refill's
    stored dates: the new fill under the program in force) and `services.recompute_schedule`
    (the pump's dates: the last fill and every program since) apply it.
    """
    from pumps import domain

    capacity: Decimal = model.reservoir_ml
    alarm_ml: Decimal = model.default_low_reservoir_alarm_ml
    low, high = model.concentration_range
    concentration = rng.choice([c for c in MARKETED_CONCENTRATIONS if low <= c <= high] or [low])
    h = History(implanted_at=implanted_at, model=model, concentration=concentration)
    h.programs.append(ProgramRow(implanted_at + timedelta(minutes=20), first_dose, None, "Initial dose after implant."))

    # Titration: an increase every 2-7 days (never within 24 h of the last, clinical.md §4
    # #48-49), within the label's 30 % (spinal) or 15 % (cerebral, paediatric) limit.
    pending: list[tuple[datetime, Decimal]] = []
    if titrate:
        moment, step_limit = implanted_at, (Decimal("0.05"), Decimal("0.15")) if cautious else (Decimal("0.10"), Decimal("0.25"))
        for _ in range(rng.randint(3, 8)):
            moment += timedelta(days=rng.randint(2, 7), minutes=rng.randrange(0, 240))
            pending.append((moment, Decimal(rng.randint(int(step_limit[0] * 100), int(step_limit[1] * 100))) / 100))
        h.stable_at = moment + timedelta(days=rng.randint(7, 30))
    else:
        h.stable_at = implanted_at + timedelta(days=1)  # a replacement keeps the established dose

    def phase_at(moment: datetime) -> str:
        return domain.Phase.MAINTENANCE if h.stable_at is not None and moment >= h.stable_at else domain.Phase.TITRATION

    def interval(phase: str) -> int:
        return policy.titration_days if phase == domain.Phase.TITRATION else policy.maintenance_days

    def segments(since: datetime) -> list[domain.Segment]:
        # services.segments_since: the program in force at `since` and every later one.
        in_force = [p for p in h.programs if p.effective_at <= since][-1:]
        later = [p for p in h.programs if p.effective_at > since]
        return [domain.Segment(p.effective_at, domain.rate_ml_per_day(p.dose, concentration)) for p in in_force + later]

    def sched(fill_at: datetime, volume: Decimal, segs: list[domain.Segment], phase: str) -> domain.Schedule:
        return domain.schedule(
            fill=domain.Fill(fill_at, volume),
            segments=segs,
            alarm_ml=alarm_ml,
            tz=policy.tz,
            margin_days=policy.margin_days,
            interval_days=interval(phase),
        )

    # The initial fill at implant: the whole reservoir, nothing withdrawn.
    fill_at, fill_ml = implanted_at + timedelta(minutes=40), capacity
    first = sched(fill_at, fill_ml, segments(fill_at)[-1:], phase_at(fill_at))
    h.refills.append(RefillRow(fill_at, Decimal(0), fill_ml, True, None, None, first.alarm_on, first.refill_by))
    last_moment = fill_at

    while True:
        now_sched = sched(fill_at, fill_ml, segments(fill_at), phase_at(last_moment))
        # Most visits fall in the week before the refill-by date; one in twenty is late,
        # never past the alarm date (the reservoir would be empty).
        visit_day = now_sched.refill_by - timedelta(days=rng.randint(0, 7))
        if rng.random() < 0.05:
            visit_day = now_sched.refill_by + timedelta(days=rng.randint(1, 4))
            if now_sched.alarm_on is not None and visit_day >= now_sched.alarm_on:
                visit_day = now_sched.alarm_on - timedelta(days=1)
        visit_at = max(
            at_local(visit_day, rng.randint(8, 15), rng.choice((0, 15, 30, 45)), policy.tz), last_moment + timedelta(hours=1)
        )
        if pending and pending[0][0] < visit_at:
            moment, step = pending.pop(0)
            if moment > stop_at:
                pending.clear()
                continue
            moment = max(moment, last_moment + timedelta(minutes=5))
            previous = h.programs[-1].dose
            h.programs.append(ProgramRow(moment, quantize(previous * (1 + step), TENTH), previous, "Titration."))
            last_moment = moment
            continue
        if visit_at > stop_at:
            break
        segs = segments(fill_at)
        delivered = domain.delivered_ml(fill_at, segs, visit_at)
        expected = domain.volume_at(fill_ml, fill_at, segs, visit_at)
        # Withdrawn residuals scatter round the expected one; about 3 % are off by more
        # than the 2 mL evaluation limit [S50] (a catheter problem, a pocket fill).
        withdrawn = expected + Decimal(str(round(rng.gauss(0, 0.25), 2)))
        if rng.random() < 0.03:
            withdrawn = expected + Decimal(rng.choice((-1, 1)) * rng.randint(210, 500)) / 100
        withdrawn = min(capacity, max(Decimal(0), quantize(withdrawn)))
        discrepancy = domain.residual_discrepancy(
            withdrawn_ml=withdrawn,
            expected_residual_ml=expected,
            delivered_since_fill_ml=min(delivered, fill_ml),
            accuracy_pct=model.accuracy_pct,
        )
        # Never more than the reservoir holds (DESIGN; R6); sometimes a little less.
        added = capacity if rng.random() < 0.8 else quantize(capacity - Decimal(rng.randint(0, 300)) / 100)
        current = h.programs[-1]
        stored = sched(
            visit_at,
            added,
            [domain.Segment(current.effective_at, domain.rate_ml_per_day(current.dose, concentration))],
            phase_at(visit_at),
        )
        h.refills.append(
            RefillRow(
                visit_at,
                withdrawn,
                added,
                False,
                discrepancy.expected_residual_ml,
                discrepancy,
                stored.alarm_on,
                stored.refill_by,
            )
        )
        fill_at, fill_ml, last_moment = visit_at, added, visit_at
        # In maintenance, one visit in seven adjusts the dose by 5-10 % (within the limits).
        if phase_at(visit_at) == domain.Phase.MAINTENANCE and rng.random() < 0.15:
            previous = current.dose
            factor = 1 + Decimal(rng.choice((-1, 1)) * rng.randint(5, 10)) / 100
            moment = visit_at + timedelta(minutes=10)
            if moment <= stop_at:
                h.programs.append(ProgramRow(moment, quantize(previous * factor, TENTH), previous, "Maintenance adjustment."))
                last_moment = moment

    if h.stable_at is not None and h.stable_at > stop_at:
        h.stable_at = None
    final = sched(fill_at, fill_ml, segments(fill_at), phase_at(stop_at))
    h.alarm_on, h.refill_by = final.alarm_on, final.refill_by
    return h


# --------------------------------------------------------------------------- writing


def generate(options: Options, *, progress: Callable[[int], object] | None = None) -> Generated:
    """Insert the load data in batches of `options.batch` patients, one transaction each."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection, transaction

    from patients.models import Clinic, Membership

    if options.pumps < 1 or options.clinics < 1:
        raise ValueError("--pumps and --clinics must be at least 1")
    if options.now.tzinfo is None:
        raise ValueError("now must be aware")
    started, cpu_started = clock.perf_counter(), clock.process_time()
    rng = random.Random(options.seed)
    out = Generated()
    tag = options.tag
    if Clinic.objects.filter(name__startswith=f"{tag} clinic ").exists():
        raise ValueError(f"clinics named '{tag} clinic ...' exist already: use another --tag or an empty database")

    with transaction.atomic():
        clinics = Clinic.objects.bulk_create(
            [
                Clinic(
                    name=f"{tag} clinic {i}",
                    time_zone=TIME_ZONES[i % len(TIME_ZONES)],
                    phone=f"{PHONE_PREFIX[TIME_ZONES[i % len(TIME_ZONES)]]}{900000 + i % 100000:06d}",
                    email=f"itb{i}@{tag.lower()}.example.org",
                    notification_email=f"itb-team{i}@{tag.lower()}.example.org" if i % 4 else "",
                    refill_margin_days=rng.choice((3, 3, 4, 5)),
                    titration_interval_days=30,
                    maintenance_interval_days=rng.choice((60, 84, 90, 90)),
                )
                for i in range(options.clinics)
            ]
        )
        User = get_user_model()
        # One unusable password hash for all: hashing per user would dominate small runs.
        unusable = make_password(None)
        users = User.objects.bulk_create(
            [
                User(
                    username=f"{tag.lower()}-{i}-{role}",
                    email=f"{role}{i}@{tag.lower()}.example.org",
                    password=unusable,
                    is_staff=True,  # clinic staff: the admin, the worklist and the API need it
                )
                for i in range(options.clinics)
                for role in ROLES
            ]
        )
        Membership.objects.bulk_create(
            [Membership(user=user, clinic=clinics[k // len(ROLES)], role=ROLES[k % len(ROLES)]) for k, user in enumerate(users)]
        )
    out.clinics, out.users, out.memberships = len(clinics), len(users), len(users)
    staff = {clinic.pk: users[k * len(ROLES) : (k + 1) * len(ROLES)] for k, clinic in enumerate(clinics)}

    context = _Context(options, rng, clinics, staff)
    use_copy = options.copy if options.copy is not None else connection.vendor == "postgresql"
    writer = _CopyWriter() if use_copy else _Writer()
    for batch in context.batches():
        with transaction.atomic():
            context.write(batch, out, writer)
        if progress is not None:
            progress(sum(len(item.pumps) for item in batch))

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    out.seconds = clock.perf_counter() - started
    out.cpu_seconds = clock.process_time() - cpu_started
    out.peak_rss_mb = peak_rss_mb()
    return out


@dataclass
class _PatientPlan:
    patient: Any
    clinic: Any
    pumps: list[tuple[Any, History]]
    extras: list[Any]


class _Context:
    """Draws patients batch by batch, so memory stays flat however large N is."""

    def __init__(self, options: Options, rng: random.Random, clinics: list[Any], staff: dict[int, list[Any]]) -> None:
        from pumps.models import PumpModel

        self.options, self.rng, self.clinics, self.staff = options, rng, clinics, staff
        self.models = {m.model_number: m for m in PumpModel.objects.filter(model_number__in=MODEL_WEIGHTS)}
        self.policies = {
            c.pk: ClinicPolicy(c.tz, c.refill_margin_days, c.titration_interval_days, c.maintenance_interval_days)
            for c in clinics
        }
        self.serial = 0
        self.patient_no = 0

    def batches(self) -> Iterator[list[_PatientPlan]]:
        remaining = self.options.pumps
        while remaining > 0:
            batch: list[_PatientPlan] = []
            while remaining > 0 and len(batch) < self.options.batch:
                plan = self.plan_patient(replacement_allowed=remaining >= 2)
                remaining -= len(plan.pumps)
                batch.append(plan)
            yield batch

    def plan_patient(self, *, replacement_allowed: bool) -> _PatientPlan:
        from notifications.models import BlockMethod, BlockReason, ContactBlock
        from patients.models import Caregiver, Diagnosis, Language, Patient, SpasticityOrigin
        from pumps.models import ClinicalEvent, EventKind, ScreeningOutcome, ScreeningRoute, ScreeningTrial

        rng, opts, now = self.rng, self.options, self.options.now
        k = self.patient_no
        self.patient_no += 1
        clinic = self.clinics[k % len(self.clinics)]
        policy = self.policies[clinic.pk]
        diagnosis = rng.choices(
            [
                Diagnosis.MULTIPLE_SCLEROSIS,
                Diagnosis.SPINAL_CORD_INJURY,
                Diagnosis.CEREBRAL_PALSY,
                Diagnosis.BRAIN_INJURY,
                Diagnosis.STROKE,
            ],
            [35, 25, 20, 12, 8],
        )[0]
        origin = (
            SpasticityOrigin.SPINAL
            if diagnosis in (Diagnosis.MULTIPLE_SCLEROSIS, Diagnosis.SPINAL_CORD_INJURY)
            else SpasticityOrigin.CEREBRAL
        )
        first_implant = now - timedelta(seconds=rng.randrange(3600, opts.years * 365 * 86400))
        # Cerebral palsy: mostly children and young adults.
        age_years = rng.randint(4, 30) if diagnosis == Diagnosis.CEREBRAL_PALSY else rng.randint(18, 80)
        birth = first_implant.date() - timedelta(days=age_years * 365 + rng.randrange(365))
        prefix = PHONE_PREFIX[clinic.time_zone]
        spanish = rng.random() < SPANISH_SHARE.get(clinic.time_zone, 0.03)
        patient = Patient(
            clinic=clinic,
            mrn=f"{opts.tag}{k:08d}",
            given_name=rng.choice(GIVEN_NAMES),
            family_name=f"Load{k}",
            birth_date=birth,
            diagnosis=diagnosis,
            spasticity_origin=origin,
            sci_t6_or_above=diagnosis == Diagnosis.SPINAL_CORD_INJURY and rng.random() < 0.5,
            communication_difficulty=rng.random() < 0.05,
            withdrawal_history=rng.random() < 0.05,
            hearing_impairment=rng.random() < 0.03,
            email=f"patient{k}@{opts.tag.lower()}.example.org" if rng.random() < 0.9 else "",
            phone=f"{prefix}{k % 1_000_000:06d}" if rng.random() < 0.85 else "",
            language=Language.SPANISH if spanish else Language.ENGLISH,
            # A few live in another zone than their clinic's (a winter home, a move).
            time_zone=rng.choice(TIME_ZONES) if rng.random() < 0.05 else "",
            contact_by_email=rng.random() >= 0.03,
            contact_by_sms=rng.random() >= 0.05,
        )
        extras: list[Any] = []
        # Screening (clinical.md §3, R1): one in six needs a second, higher dose, 24-72 h later.
        screened_at = first_implant - timedelta(days=rng.randint(14, 120), hours=rng.randint(0, 6))
        dose = Decimal(25) if age_years < 8 else Decimal(50)
        if rng.random() < 1 / 6:
            extras.append(
                ScreeningTrial(patient=patient, given_at=screened_at, dose_mcg=int(dose), outcome=ScreeningOutcome.NEGATIVE)
            )
            screened_at += timedelta(hours=rng.randint(24, 72))
            dose = Decimal(75) if dose == 50 else Decimal(50)
        effect_hours = Decimal(rng.randint(40, 120)) / 10
        extras.append(
            ScreeningTrial(
                patient=patient,
                given_at=screened_at,
                dose_mcg=int(dose),
                route=ScreeningRoute.LUMBAR_PUNCTURE if rng.random() < 0.9 else ScreeningRoute.CATHETER,
                outcome=ScreeningOutcome.POSITIVE,
                effect_duration_hours=effect_hours,
            )
        )
        if rng.random() < 0.3:
            extras.append(
                Caregiver(
                    patient=patient,
                    name=f"Carer of {patient.family_name}",
                    relationship=rng.choice(["spouse", "parent", "child", "carer"]),
                    email=f"carer{k}@{opts.tag.lower()}.example.org" if rng.random() < 0.8 else "",
                    phone=f"{prefix}{(k + 500_000) % 1_000_000:06d}" if rng.random() < 0.5 else "",
                    language=patient.language,
                    receives_safety_messages=rng.random() < 0.9,
                )
            )
        if patient.phone and rng.random() < 0.01:
            extras.append(
                ContactBlock(
                    channel="sms",
                    address=str(patient.phone),
                    reason=BlockReason.OPTED_OUT,
                    method=BlockMethod.SMS_KEYWORD,
                    keyword="STOP",
                    created_at=now - timedelta(days=rng.randrange(1, 300)),
                )
            )
        if patient.email and rng.random() < 0.005:
            extras.append(
                ContactBlock(
                    channel="email",
                    address=patient.email,
                    reason=BlockReason.BOUNCED,
                    method=BlockMethod.PROVIDER,
                    created_at=now - timedelta(days=rng.randrange(1, 300)),
                )
            )

        # The dose after implant: twice the screening dose, once if its effect lasted > 8 h (R2).
        first_dose = dose if effect_hours > 8 else 2 * dose
        cautious = origin == SpasticityOrigin.CEREBRAL or age_years < 18
        stop_at = now
        if rng.random() < opts.missed_share:
            stop_at = now - timedelta(days=rng.uniform(1, max(1, opts.missed_days)))
        fate = rng.random()
        pumps: list[tuple[Any, History]] = []
        if replacement_allowed and fate < 0.05 and now - first_implant > timedelta(days=400):
            # A battery or catheter replacement: the first pump ends the day the second goes in.
            swap_at = first_implant + (now - first_implant) * rng.uniform(0.4, 0.9)
            old = simulate(
                rng, model=self._model(), policy=policy, implanted_at=first_implant, stop_at=swap_at,
                first_dose=first_dose, cautious=cautious, titrate=True,
            )  # fmt: skip
            old.ended_at = swap_at
            last_dose = old.programs[-1].dose
            new_at = swap_at + timedelta(hours=2)
            new = simulate(
                rng, model=self._model(), policy=policy, implanted_at=new_at, stop_at=max(stop_at, new_at + timedelta(hours=2)),
                first_dose=last_dose, cautious=cautious, titrate=False,
            )  # fmt: skip
            pumps = [self._pump(patient, old, "replaced", "Elective replacement indicator."), self._pump(patient, new)]
            extras.append(
                ClinicalEvent(pump=pumps[0][0], kind=EventKind.REPLACEMENT_INDICATOR, occurred_at=swap_at - timedelta(days=30))
            )
            extras.append(ClinicalEvent(pump=pumps[1][0], kind=EventKind.PUMP_REPLACEMENT, occurred_at=new_at))
        else:
            ended_at = None
            if fate > 0.98 and now - first_implant > timedelta(days=60):
                ended_at = first_implant + (now - first_implant) * rng.uniform(0.2, 0.95)
                stop_at = min(stop_at, ended_at)
            h = simulate(
                rng, model=self._model(), policy=policy, implanted_at=first_implant, stop_at=stop_at,
                first_dose=first_dose, cautious=cautious, titrate=True,
            )  # fmt: skip
            if ended_at is not None:
                h.ended_at = ended_at
                pumps = [self._pump(patient, h, "explanted", "Pocket infection.")]
                extras.append(ClinicalEvent(pump=pumps[0][0], kind=EventKind.INFECTION, occurred_at=ended_at - timedelta(days=5)))
            else:
                pumps = [self._pump(patient, h)]
        active = pumps[-1][0]
        r = rng.random()
        if active.status == "active":
            if r < 0.005:
                extras.append(
                    ClinicalEvent(pump=active, kind=EventKind.MRI_PLANNED, occurred_at=now + timedelta(days=rng.randrange(1, 30)))
                )
            elif r < 0.008 and now - active.implanted_at > timedelta(days=3):
                done = active.implanted_at + (now - active.implanted_at) * rng.uniform(0.5, 0.99)
                extras.append(
                    ClinicalEvent(pump=active, kind=EventKind.MRI_DONE, occurred_at=done, field_strength_tesla=Decimal("1.5"))
                )
                if rng.random() < 0.5:
                    extras.append(
                        ClinicalEvent(pump=active, kind=EventKind.POST_MRI_CHECK, occurred_at=done + timedelta(hours=3))
                    )
            elif r < 0.03:
                for refill in pumps[-1][1].refills[1:2]:
                    # The alarm sounded a few days before a late refill.
                    extras.append(
                        ClinicalEvent(
                            pump=active, kind=EventKind.LOW_RESERVOIR_ALARM, occurred_at=refill.performed_at - timedelta(days=2)
                        )
                    )
        return _PatientPlan(patient, clinic, pumps, extras)

    def _model(self) -> PumpModel:
        number = self.rng.choices(list(MODEL_WEIGHTS), list(MODEL_WEIGHTS.values()))[0]
        return self.models[number]

    def _pump(self, patient: Any, h: History, status: str = "active", reason: str = "") -> tuple[Any, History]:
        from pumps import domain
        from pumps.models import Phase, Pump, PumpStatus

        self.serial += 1
        tz = ZoneInfo(patient.clinic.time_zone)
        ended = status != PumpStatus.ACTIVE
        eos = None
        if h.refills and self.rng.random() < 0.5:
            eos = domain.local_date(h.implanted_at, tz) + timedelta(days=self.rng.randrange(5 * 365, 7 * 365))
        pump = Pump(
            patient=patient,
            model=h.model,
            low_reservoir_alarm_ml=h.model.default_low_reservoir_alarm_ml,
            serial_number=f"{self.options.tag}{self.options.seed}-{self.serial:08d}",
            implanted_at=h.implanted_at,
            implanting_physician="Dr Implant",
            following_physician="Dr Follow",
            status=status,
            explanted_on=domain.local_date(h.ended_at, tz) if ended and h.ended_at else None,
            explant_reason=reason,
            phase=Phase.MAINTENANCE if h.stable_at is not None else Phase.TITRATION,
            stable_dose_at=h.stable_at,
            estimated_end_of_service_on=eos,
            alarm_on=None if ended else h.alarm_on,
            refill_by=None if ended else h.refill_by,
        )
        return pump, h

    def write(self, batch: list[_PatientPlan], out: Generated, writer: _Writer) -> None:
        """Insert one batch in dependency order: patients and pumps get their keys first."""
        from notifications.models import ContactBlock
        from patients.models import Caregiver, Patient
        from pumps import services
        from pumps.models import ClinicalEvent, DrugProduct, Program, Pump, Refill, ScreeningTrial

        writer.insert(Patient, [plan.patient for plan in batch])
        pumps: list[Any] = []
        programs: list[dict[str, Any]] = []
        refills: list[dict[str, Any]] = []
        for plan in batch:
            pumps.extend(pump for pump, _ in plan.pumps)
        writer.insert(Pump, pumps)
        for plan in batch:
            clinician, nurse = self.staff[plan.clinic.pk][0], self.staff[plan.clinic.pk][1]
            for pump, h in plan.pumps:
                for p in h.programs:
                    programs.append(
                        {
                            "pump_id": pump.pk,
                            "effective_at": p.effective_at,
                            "dose_mcg_per_day": p.dose,
                            "concentration_mcg_per_ml": h.concentration,
                            "previous_dose_mcg_per_day": p.previous,
                            "reason": p.reason,
                            "author_id": clinician.pk,
                        }
                    )
                lot = f"LOT{self.rng.randrange(10**6):06d}"
                product = self.rng.choice((DrugProduct.LIORESAL, DrugProduct.GABLOFEN, DrugProduct.GENERIC))
                for r in h.refills:
                    d = r.discrepancy
                    out.flagged += bool(d and d.flagged)
                    refills.append(
                        {
                            "pump_id": pump.pk,
                            "performed_at": r.performed_at,
                            "withdrawn_ml": r.withdrawn_ml,
                            "volume_added_ml": r.added_ml,
                            "concentration_mcg_per_ml": h.concentration,
                            "drug_product": product,
                            "drug_lot": lot,
                            "method": self.rng.choice(("palpation", "template", "ultrasound")),
                            "performed_by_id": nurse.pk,
                            "is_initial_fill": r.initial,
                            "expected_residual_ml": r.expected_ml,
                            **services.discrepancy_fields(d),
                            "volume_after_fill_ml": r.added_ml,
                            "low_reservoir_alarm_ml": pump.low_reservoir_alarm_ml,
                            "alarm_on": r.alarm_on,
                            "refill_by": r.refill_by,
                        }
                    )
                if pump.status == "active":
                    out.active += 1
                    today = domain_local_today(self.options.now, plan.patient.clinic.time_zone)
                    out.overdue += pump.refill_by is not None and pump.refill_by < today
                else:
                    out.ended += 1
        writer.insert_values(Program, programs)
        writer.insert_values(Refill, refills)
        extras: dict[type, list[Any]] = {ScreeningTrial: [], Caregiver: [], ClinicalEvent: [], ContactBlock: []}
        for plan in batch:
            for item in plan.extras:
                extras[type(item)].append(item)
        for model_class, items in extras.items():
            writer.insert(model_class, items)
        out.patients += len(batch)
        out.pumps += len(pumps)
        out.programs += len(programs)
        out.refills += len(refills)
        out.screenings += len(extras[ScreeningTrial])
        out.caregivers += len(extras[Caregiver])
        out.events += len(extras[ClinicalEvent])
        out.blocks += len(extras[ContactBlock])


class _Writer:
    """Django's `bulk_create`: works on any database (SQLite in development)."""

    def insert(self, model: type[Any], objects: list[Any]) -> None:
        """Insert model instances; afterwards each has its key (foreign keys to earlier ones resolved)."""
        model.objects.bulk_create(objects)

    def insert_values(self, model: type[Any], rows: list[dict[str, Any]]) -> None:
        """Insert rows given as {attname: value}, every row with the same names; keys are not needed afterwards."""
        model.objects.bulk_create([model(**row) for row in rows])


class _CopyWriter(_Writer):
    """PostgreSQL's COPY FROM STDIN through psycopg's `cursor.copy()`.

    `bulk_create` spends most of the generator's time preparing every field of every
    instance and quoting the arrays Django sends for UNNEST (RESULTS.md, "Load-data
    generator"); COPY streams rows with psycopg's dumpers instead. Keys come from each
    table's own sequence (`nextval`, as an INSERT would take them), so foreign keys are
    known before the rows go in. Values the rows of `insert_values` leave out are those of
    one prototype instance, prepared by Django once per table (defaults, JSON, `auto_now_add`).
    """

    def __init__(self) -> None:
        from django.db import connection

        self.connection = connection

    def _copy(self, table: str, columns: list[str], rows: Iterator[list[Any]] | list[list[Any]]) -> None:
        from psycopg import sql

        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        )
        self.connection.ensure_connection()
        with self.connection.connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def _reserve(self, model: type[Any], count: int) -> list[int]:
        table, pk = model._meta.db_table, model._meta.pk.column
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)", [table, pk, count])
            return [row[0] for row in cursor.fetchall()]

    def insert(self, model: type[Any], objects: list[Any]) -> None:
        if not objects:
            return
        fields = model._meta.concrete_fields
        for obj, pk in zip(objects, self._reserve(model, len(objects)), strict=True):
            # Sets `patient_id` from the patient given to the constructor, as bulk_create does.
            obj._prepare_related_fields_for_save(operation_name="bulk_create")
            obj.pk = pk
        connection = self.connection
        self._copy(
            model._meta.db_table,
            [f.column for f in fields],
            ([f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields] for obj in objects),
        )
        for obj in objects:
            obj._state.adding, obj._state.db = False, connection.alias

    def insert_values(self, model: type[Any], rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        fields = [f for f in model._meta.concrete_fields if not f.primary_key]
        prototype = model(**rows[0])
        template = [f.get_db_prep_save(f.pre_save(prototype, True), self.connection) for f in fields]
        names = [f.attname for f in fields]
        given = [(names.index(name), name) for name in rows[0]]

        def lines() -> Iterator[list[Any]]:
            for row in rows:
                line = template.copy()
                for index, name in given:
                    line[index] = row[name]
                yield line

        self._copy(model._meta.db_table, [f.column for f in fields], lines())


def domain_local_today(now: datetime, time_zone: str) -> date:
    return now.astimezone(ZoneInfo(time_zone)).date()


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pumps", type=int, default=1000, help="pumps to create (replaced ones included)")
    parser.add_argument("--clinics", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--now",
        default=None,
        help="the moment histories end, ISO 8601 with an offset (default: today 12:00 UTC; fix it for identical data)",
    )
    parser.add_argument("--years", type=int, default=5, help="implants spread over this many years")
    parser.add_argument("--missed-share", type=float, default=0.02, help="share of patients who missed their last visits")
    parser.add_argument("--missed-days", type=int, default=60)
    parser.add_argument("--tag", default="L", help="prefix of clinic names, MRNs and serials (a second run needs another)")
    parser.add_argument("--batch", type=int, default=1000, help="patients a transaction")
    parser.add_argument(
        "--bulk-create",
        action="store_true",
        help="write with Django's bulk_create even on PostgreSQL (default there: COPY), to compare",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection
    from django.utils import timezone

    from pumptrack.progress import ProgressBar

    if args.now:
        now = datetime.fromisoformat(args.now)
        if now.tzinfo is None:
            raise SystemExit("--now needs a UTC offset, e.g. 2027-03-01T12:00:00+00:00")
    else:
        now = datetime.combine(timezone.now().date(), time(12), tzinfo=UTC)
    options = Options(
        pumps=args.pumps,
        clinics=args.clinics,
        now=now,
        seed=args.seed,
        years=args.years,
        missed_share=args.missed_share,
        missed_days=args.missed_days,
        tag=args.tag,
        batch=args.batch,
        copy=False if args.bulk_create else None,
    )
    print(
        f"generating {args.pumps:,} pumps in {args.clinics} clinics into {connection.settings_dict['NAME']} (now {now.isoformat()})",
        file=sys.stderr,
    )
    try:
        with ProgressBar(args.pumps, label="pumps", stream=sys.stderr) as bar:
            result = generate(options, progress=bar)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(result.summary())


if __name__ == "__main__":
    main()
