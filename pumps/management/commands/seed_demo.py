"""`manage.py seed_demo`: two demo clinics, their staff, and twenty patients whose pumps
show every state worth seeing on the day the command runs.

Every clinical record goes through `pumps.services` with times relative to `now`, so the
histories obey the rules real ones do: append-only, nothing in the future, dose-change
warnings acknowledged with a reason. The states that depend on today's date (due, overdue,
past the alarm date) come from the last fill, whose volume is worked backwards from the
alarm date the pump must show (`Story.refill(alarm_in=...)`).

Then the reminder system's last day is replayed through `notifications.services`
(`MessageHistory`): yesterday's sweep plans and sends what was due (one text to a dead
number, one send cut off by a "crashed worker", the clinic's mail server down for one
escalation email), delivery receipts arrive, a patient replies STOP, staff handle two
escalations; then everything is planned for now. So the outbox shows every state, and
what is due now is left for the demo's Celery worker to send.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import zoneinfo
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import cycle
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.core.mail.backends.base import BaseEmailBackend
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import ProtectedError
from django.test import override_settings
from django.utils import timezone

from notifications import services as messaging
from notifications.models import (
    ContactBlock,
    Escalation,
    EscalationReason,
    EscalationStatus,
    Message,
    RecipientKind,
    Severity,
    Status,
)
from notifications.transports import Outgoing, SmsBackend, TransportError
from patients.models import ORIGIN_BY_DIAGNOSIS, Caregiver, Clinic, Diagnosis, Language, Membership, Patient, Role
from pumps import appointments, domain, services
from pumps.models import (
    Catheter,
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
    RefillMethod,
    ScreeningOutcome,
)
from pumptrack.progress import ProgressBar

# Clinic policy restored to the model's defaults on creation and --reset (refill and messages).
POLICY_FIELDS = (
    "refill_margin_days",
    "titration_interval_days",
    "maintenance_interval_days",
    "reminder_days",
    "high_risk_extra_reminder_days",
    "reminder_time",
    "quiet_hours_start",
    "quiet_hours_end",
    "escalation_time",
    "heat_season_month",
    "heat_season_day",
    "alcohol_reminder_months",
    "battery_planning_months",
    "post_mri_check_hours",
)
DEFAULT_PASSWORD = "pumptrack-demo"  # noqa: S105 (a published demo password, printed on every run)
ADMIN_USERNAME = "admin"
SYNCHROMED_20, SYNCHROMED_40, PROMETRA_20, PROMETRA_40 = "8637-20", "8637-40", "13827", "16827"
CENT = Decimal("0.01")
HALF_DAY = Decimal("0.5")

# ----------------------------------------------------------------------------- clinics and staff


@dataclass(frozen=True)
class StaffSpec:
    role: Role
    first_name: str
    last_name: str


@dataclass(frozen=True)
class ClinicSpec:
    name: str
    time_zone: str
    phone: str
    email: str
    notification_email: str  # where staff escalations are emailed
    username_suffix: str  # "" for the first clinic: `nurse`; "2" for the second: `nurse2`
    staff: tuple[StaffSpec, ...]

    def username(self, role: Role) -> str:
        return f"{role.value}{self.username_suffix}"


RIVERSIDE = ClinicSpec(
    name="Riverside Neuro Rehab",
    time_zone="Europe/London",
    phone="+442071234567",
    email="itb@riverside.example.org",
    notification_email="itb-alerts@riverside.example.org",
    username_suffix="",
    staff=(
        StaffSpec(Role.CLINICIAN, "Helen", "Carter"),
        StaffSpec(Role.NURSE, "Sam", "Patel"),
        StaffSpec(Role.COORDINATOR, "Jo", "Lambert"),
        StaffSpec(Role.VIEWER, "Chris", "Morgan"),
    ),
)
SANTA_ANA = ClinicSpec(
    name="Clínica Santa Ana",
    time_zone="Europe/Madrid",
    phone="+34912345678",
    email="bomba@santaana.example.org",
    notification_email="alertas-bomba@santaana.example.org",
    username_suffix="2",
    staff=(
        StaffSpec(Role.CLINICIAN, "Elena", "Vidal"),
        StaffSpec(Role.NURSE, "Marta", "Gil"),
        StaffSpec(Role.COORDINATOR, "Luis", "Herrera"),
        StaffSpec(Role.VIEWER, "Ana", "Prieto"),
    ),
)
CLINICS = (RIVERSIDE, SANTA_ANA)


# ----------------------------------------------------------------------------- building a history


# Withdrawn residuals differ a little from the expected volume, as measured ones do; well
# inside the 2 mL limit and the accuracy band, so only the deliberate discrepancies flag.
MEASUREMENT_NOISE_ML = tuple(Decimal(x) for x in ("0.2", "-0.3", "0.1", "-0.1", "0.3", "0.0"))
METHODS = (RefillMethod.PALPATION, RefillMethod.PALPATION, RefillMethod.TEMPLATE, RefillMethod.ULTRASOUND)


class Story:
    """Builds one patient's history through the services, in time order.

    Moments are given as whole days before today (clinic-local) and a local clock time, so
    that every past record is at least a day old and the states hold whatever the hour.
    """

    def __init__(self, patient: Patient, staff: dict[Role, Any], now: datetime) -> None:
        self.patient = patient
        self.clinic = patient.clinic
        self.tz = self.clinic.tz
        self.now = now
        self.today = domain.local_date(now, self.tz)
        self.clinician = staff[Role.CLINICIAN]
        self.nurse = staff[Role.NURSE]
        self._pump: Pump | None = None
        self.concentration = Decimal(0)
        self._pumps_implanted = 0
        self._noise = cycle(MEASUREMENT_NOISE_ML)
        self._methods = cycle(METHODS)

    @property
    def pump(self) -> Pump:
        if self._pump is None:
            raise CommandError(f"{self.patient.mrn}: the story uses a pump before implanting one.")
        return self._pump

    def ago(self, days: int, hour: int = 10, minute: int = 0) -> datetime:
        """Local `hour:minute`, `days` days before today (hours 8-23 never fall in a DST gap)."""
        if days < 1:
            raise CommandError(f"{self.patient.mrn}: past records must be at least a day old.")
        return datetime.combine(self.today - timedelta(days=days), time(hour, minute), tzinfo=self.tz)

    def ahead(self, days: int, hour: int = 10, minute: int = 0) -> datetime:
        return datetime.combine(self.today + timedelta(days=days), time(hour, minute), tzinfo=self.tz)

    # -- screening and implant

    def screening(self, days_ago: int, dose_mcg: int, outcome: ScreeningOutcome, effect_hours: str | None = None) -> None:
        notes = {
            ScreeningOutcome.POSITIVE: "Ashworth scores fell by at least one point; no adverse effects.",
            ScreeningOutcome.NEGATIVE: "No meaningful change in tone over the observation window.",
        }.get(outcome, "")
        services.record_screening(
            patient=self.patient,
            given_at=self.ago(days_ago, 9),
            dose_mcg=dose_mcg,
            now=self.now,
            outcome=outcome,
            effect_duration_hours=Decimal(effect_hours) if effect_hours is not None else None,
            notes=notes,
            performed_by=self.clinician,
        )

    def implant(self, model_number: str, days_ago: int, *, tip_level: str, catheter_cm: str = "45.0") -> Pump:
        model = PumpModel.objects.get(model_number=model_number)
        implanted_at = self.ago(days_ago, 8, 30)
        self._pumps_implanted += 1
        # Service life: SynchroMed II "a maximum of 7 years", Prometra II over 10 (clinical.md §1).
        months = model.expected_battery_months or 84
        pump = services.implant_pump(
            patient=self.patient,
            model=model,
            serial_number=f"{self.patient.mrn}-P{self._pumps_implanted}",
            implanted_at=implanted_at,
            now=self.now,
            implanting_physician=f"{self.clinician.first_name} {self.clinician.last_name}",
            following_physician=f"{self.clinician.first_name} {self.clinician.last_name}",
            estimated_end_of_service_on=implanted_at.date() + timedelta(days=months * 365 // 12),
        )
        synchromed = model.name.startswith("SynchroMed")
        Catheter.objects.create(
            pump=pump,
            model="Ascenda 8780" if synchromed else "Prometra intrathecal catheter",
            lot=f"C{self.patient.mrn.replace('-', '')}{self._pumps_implanted}",
            tip_level=tip_level,
            implanted_length_cm=Decimal(catheter_cm),
            implanted_on=self.today - timedelta(days=days_ago),
        )
        self._pump = pump
        return pump

    def start(
        self,
        days_ago: int,
        *,
        dose: int,
        concentration: int,
        volume: str | None = None,
        withdrawn: str = "0",
        acknowledged: Sequence[str] = (),
        reason: str = "",
    ) -> None:
        """The first programming and the initial fill (the service wants the program first)."""
        self.concentration = Decimal(concentration)
        self.program(days_ago, dose, hour=12, acknowledged=acknowledged, reason=reason)
        self.refill(days_ago, volume=volume, withdrawn=withdrawn, hour=12, minute=5)

    # -- programming

    def program(
        self,
        days_ago: int,
        dose: int | None = None,
        *,
        hour: int = 11,
        mode: ProgramMode = ProgramMode.SIMPLE,
        flex_steps: Sequence[tuple[str, str]] = (),
        bolus: tuple[int, int, int] | None = None,
        acknowledged: Sequence[str] = (),
        reason: str = "",
    ) -> Program:
        """A programming change; `bolus` is (basal mcg/day, bolus mcg, boluses a day)."""
        basal, bolus_mcg, per_day = bolus if bolus else (None, None, None)
        inp = services.ProgramInput(
            effective_at=self.ago(days_ago, hour),
            concentration_mcg_per_ml=self.concentration,
            mode=mode,
            dose_mcg_per_day=Decimal(dose) if dose is not None else None,
            flex_steps=[{"starts": starts, "mcg_per_hour": rate} for starts, rate in flex_steps],
            basal_mcg_per_day=Decimal(basal) if basal is not None else None,
            bolus_mcg=Decimal(bolus_mcg) if bolus_mcg is not None else None,
            boluses_per_day=per_day,
        )
        return services.change_program(self.pump, inp, by=self.clinician, now=self.now, acknowledged=acknowledged, reason=reason)

    def titrate(self, *steps: tuple[int, int]) -> None:
        """Dose steps as (days ago, mcg/day), each within the phase's limit and 24 h apart."""
        for days_ago, dose in steps:
            self.program(days_ago, dose)

    def maintenance(self, days_ago: int) -> None:
        # The stable dose is recorded at that visit, so `now` is the visit, not today.
        services.set_phase(self.pump, Phase.MAINTENANCE, now=self.ago(days_ago, 12))

    # -- refills

    def refill(
        self,
        days_ago: int,
        *,
        volume: str | None = None,
        alarm_in: int | None = None,
        concentration: int | None = None,
        off_by: str | None = None,
        withdrawn: str | None = None,
        hour: int = 10,
        minute: int = 0,
        notes: str = "",
    ) -> Refill:
        """A refill. `alarm_in`: fill just the volume that puts the low-reservoir alarm that
        many days from today (negative: already past); default: fill to capacity.
        `off_by`: withdraw that much more (or less) than expected."""
        pump = self.pump
        performed_at = self.ago(days_ago, hour, minute)
        concentration_now = Decimal(concentration) if concentration else self.concentration
        residual = services.pump_state(pump, performed_at).volume_ml
        if residual is None:
            withdrawn_ml = Decimal(withdrawn or "0")  # the initial fill: nothing to compare with
        else:
            if residual <= pump.low_reservoir_alarm_ml:
                raise CommandError(
                    f"{self.patient.mrn}: the reservoir reached its alarm volume before the refill {days_ago} days ago."
                )
            noise = Decimal(off_by) if off_by is not None else next(self._noise)
            withdrawn_ml = max(Decimal(0), residual + noise)
        if alarm_in is not None:
            volume_ml = self._volume_for_alarm(performed_at, concentration_now, alarm_in)
        else:
            volume_ml = Decimal(volume) if volume else pump.model.reservoir_ml
        filled_on = domain.local_date(performed_at, self.tz)
        refill = services.record_refill(
            pump,
            services.RefillInput(
                performed_at=performed_at,
                withdrawn_ml=withdrawn_ml,
                volume_added_ml=volume_ml,
                concentration_mcg_per_ml=concentration_now,
                drug_product=DrugProduct.GABLOFEN if concentration_now == 1000 else DrugProduct.LIORESAL,
                drug_lot=f"B{filled_on:%y%m}{pump.pk % 100:02d}",
                expires_on=filled_on + timedelta(days=540),
                method=next(self._methods) if residual is not None else "",
                notes=notes,
            ),
            by=self.nurse,
            now=self.now,
        )
        self.concentration = concentration_now
        return refill

    def _volume_for_alarm(self, performed_at: datetime, concentration: Decimal, alarm_in: int) -> Decimal:
        """Volume after the fill that makes `alarm_on` = today + alarm_in.

        alarm_on = fill date + floor((volume − alarm volume) / rate) (DESIGN "Refill
        arithmetic"). Aiming half a day past the boundary keeps the 0.01 mL rounding of the
        volume from moving the date.
        """
        pump = self.pump
        dose = services.pump_state(pump, performed_at).program
        assert dose is not None
        rate = domain.rate_ml_per_day(dose.dose_mcg_per_day, concentration)
        days = (self.today + timedelta(days=alarm_in) - domain.local_date(performed_at, self.tz)).days
        volume = (pump.low_reservoir_alarm_ml + rate * (days + HALF_DAY)).quantize(CENT, rounding=ROUND_HALF_UP)
        if not 0 < volume <= pump.model.reservoir_ml:
            raise CommandError(f"{self.patient.mrn}: an alarm in {alarm_in} days needs {volume} mL, more than the pump holds.")
        return volume

    # -- events and the end of a pump

    def event(self, kind: EventKind, when: datetime, notes: str, **details: Any) -> None:
        services.record_event(pump=self.pump, kind=kind, occurred_at=when, now=self.now, by=self.nurse, notes=notes, **details)

    def end(self, status: PumpStatus, days_ago: int, reason: str) -> None:
        services.end_pump(self.pump, status=status, on=self.today - timedelta(days=days_ago), reason=reason, now=self.now)


# ----------------------------------------------------------------------------- the stories
# Doses follow the label: first dose 1x or 2x the effective screening dose; titration steps
# at most 30 % (spinal) or 15 % (cerebral, under 18), 24 h apart; maintenance steps at most
# 40 % / 20 % (clinical.md §4). Typical maintenance doses: 300-800 mcg/day spinal, 90-700
# cerebral (§4 #51). Concentrations are the marketed 500, 1000 and 2000 mcg/mL (§2).


def _due_this_week_mri_planned(s: Story) -> None:
    """Maintenance, refill due this week (3 days before the alarm); MRI planned (SynchroMed)."""
    s.screening(430, 50, ScreeningOutcome.POSITIVE, "6")
    s.implant(SYNCHROMED_40, 400, tip_level="T10")
    s.start(400, dose=100, concentration=500)
    s.titrate((395, 125), (389, 160), (382, 200), (375, 250), (368, 300))
    s.refill(350, concentration=1000)
    s.maintenance(340)
    s.refill(262)
    s.program(200, 380)
    s.refill(172)
    s.refill(84, alarm_in=7)
    s.event(
        EventKind.MRI_PLANNED,
        s.ahead(9, 14, 30),
        "Lumbar spine MRI at 1.5 T. SynchroMed: infusion stops during the scan; pump check afterwards.",
        field_strength_tesla=Decimal("1.5"),
    )


def _overdue_alarm_tomorrow(s: Story) -> None:
    """Overdue: the refill-by date has passed and the low-reservoir alarm is due tomorrow."""
    s.screening(420, 50, ScreeningOutcome.POSITIVE, "5")
    s.implant(SYNCHROMED_20, 400, tip_level="T11")
    s.start(400, dose=100, concentration=500)
    s.titrate((396, 130), (390, 165), (383, 210), (376, 260))
    s.refill(365, concentration=2000)
    s.maintenance(360)
    s.refill(275)
    s.program(250, 340)
    s.refill(185)
    s.refill(125)
    s.refill(80, alarm_in=1, notes="Partial fill: the patient is travelling; next visit booked before the alarm date.")


def _titration_paediatric(s: Story) -> None:
    """Titration under 18: 15 % steps; negative 50 mcg screening, positive 75 mcg a day later."""
    s.screening(40, 50, ScreeningOutcome.NEGATIVE, "0")
    s.screening(38, 75, ScreeningOutcome.POSITIVE, "10")
    s.implant(SYNCHROMED_20, 21, tip_level="T6", catheter_cm="38.0")
    s.start(21, dose=75, concentration=500)  # effect over 8 h: the same dose once a day
    s.titrate((18, 85), (14, 97), (9, 110), (4, 125))


def _past_alarm_date(s: Story) -> None:
    """Past the low-reservoir alarm date, alarm recorded; hearing impairment: the SynchroMed
    alarm tones may go unheard (clinical.md §1.1 #8, [S74])."""
    s.screening(520, 50, ScreeningOutcome.POSITIVE, "6")
    s.implant(SYNCHROMED_40, 500, tip_level="T9")
    s.start(500, dose=100, concentration=500)
    s.titrate((497, 115), (493, 130), (488, 149), (482, 170), (476, 195), (470, 220), (463, 250))
    s.refill(440, concentration=1000)
    s.maintenance(440)
    s.refill(350)
    s.program(300, 290)
    s.refill(260)
    s.refill(170)
    s.refill(80, alarm_in=-2)
    s.event(
        EventKind.LOW_RESERVOIR_ALARM,
        s.ago(1, 8, 15),
        "Wife phoned: the pump has been beeping since last night (patient cannot hear it). Urgent refill booked.",
    )


def _due_within_14_days(s: Story) -> None:
    """Maintenance, refill due within two weeks (the 90-day visit interval)."""
    s.screening(300, 50, ScreeningOutcome.POSITIVE, "9")
    s.implant(PROMETRA_20, 280, tip_level="T8", catheter_cm="50.0")
    s.start(280, dose=50, concentration=500)
    s.titrate((277, 57), (272, 65), (266, 74), (259, 85), (252, 97), (245, 110), (238, 125), (231, 140))
    s.refill(215, concentration=1000)
    s.maintenance(215)
    s.refill(164)
    s.refill(79)


def _flex_program_after_mri(s: Story) -> None:
    """Maintenance on a flex program (more at night and on waking); MRI with pump check."""
    s.screening(500, 50, ScreeningOutcome.POSITIVE, "6")
    s.implant(SYNCHROMED_40, 480, tip_level="T10")
    s.start(480, dose=100, concentration=500)
    s.titrate((476, 130), (470, 165), (463, 210), (456, 270), (449, 340), (442, 420))
    s.refill(435, concentration=2000)
    s.maintenance(430)
    s.refill(335)
    s.refill(245)
    s.program(
        240,
        mode=ProgramMode.FLEX,
        flex_steps=[("06:00", "30"), ("09:00", "15"), ("21:00", "20")],
        reason="Morning spasms: a higher rate from 06:00 to 09:00.",
    )
    s.refill(155)
    s.event(EventKind.MRI_PLANNED, s.ago(120, 14), "Brain MRI at 1.5 T.", field_strength_tesla=Decimal("1.5"))
    s.event(EventKind.MRI_DONE, s.ago(120, 14, 45), "Brain MRI at 1.5 T.", field_strength_tesla=Decimal("1.5"))
    s.event(EventKind.POST_MRI_CHECK, s.ago(120, 16, 30), "Pump interrogated after the scan: motor running, program unchanged.")
    s.refill(65)


def _discrepancy_more_than_expected(s: Story) -> None:
    """Last refill withdrew 3.4 mL more than expected (flagged: possible under-delivery)."""
    s.screening(410, 50, ScreeningOutcome.POSITIVE, "5")
    s.implant(SYNCHROMED_40, 390, tip_level="T10")
    s.start(390, dose=100, concentration=500)
    s.titrate((386, 125), (380, 160), (373, 200), (366, 250))
    s.refill(340, concentration=1000)
    s.maintenance(335)
    s.refill(265)
    s.refill(190)
    s.refill(115)
    s.refill(
        25,
        off_by="3.4",
        notes="Withdrew 3.4 mL more than expected: possible under-delivery. Catheter access port study and X-ray booked.",
    )


def _explanted_after_infection(s: Story) -> None:
    """Explanted after a pocket infection: no longer on any due list."""
    s.screening(300, 50, ScreeningOutcome.POSITIVE, "4")
    s.implant(SYNCHROMED_20, 280, tip_level="T11")
    s.start(280, dose=100, concentration=500)
    s.titrate((276, 125), (270, 155), (263, 190), (256, 230))
    s.refill(245, concentration=1000)
    s.maintenance(240)
    s.refill(185)
    s.refill(125)
    s.event(EventKind.INFECTION, s.ago(75, 15), "Pocket erythema and wound breakdown; cultures grew S. aureus.")
    s.end(PumpStatus.EXPLANTED, 70, "Pocket infection (S. aureus). Oral baclofen restarted; re-implant after treatment.")


def _replaced_at_eri(s: Story) -> None:
    """Transferred in with a 7-year-old pump, replaced at its replacement indicator; the
    successor continues the dose (both first doses acknowledged: no screening on record)."""
    s.implant(SYNCHROMED_40, 2500, tip_level="T10")
    s.start(
        230,
        dose=480,
        concentration=2000,
        withdrawn="11.2",
        acknowledged=[domain.Rule.INITIAL_DOSE_UNUSUAL],
        reason="Transferred from another centre; dose read from the programmer at the first visit here.",
    )
    s.maintenance(230)
    s.refill(140)
    s.event(
        EventKind.REPLACEMENT_INDICATOR, s.ago(95, 11), "Elective replacement indicator at interrogation: replace within 90 days."
    )
    s.event(EventKind.PUMP_REPLACEMENT, s.ago(60, 8, 30), "Pump replaced at the ERI; catheter kept and reconnected.")
    s.end(PumpStatus.REPLACED, 60, "Battery at the elective replacement indicator.")
    s.implant(SYNCHROMED_40, 60, tip_level="T10")
    s.start(
        60,
        dose=480,
        concentration=2000,
        acknowledged=[domain.Rule.INITIAL_DOSE_UNUSUAL],
        reason="Replacement pump: continuing the established dose of 480 mcg/day.",
    )
    s.maintenance(60)


def _periodic_bolus(s: Story) -> None:
    """Maintenance on a periodic-bolus program; screened negative at 50 mcg, positive at 75."""
    s.screening(610, 50, ScreeningOutcome.NEGATIVE, "0")
    s.screening(608, 75, ScreeningOutcome.POSITIVE, "7")
    s.implant(PROMETRA_40, 580, tip_level="T10", catheter_cm="48.0")
    s.start(580, dose=150, concentration=500)
    s.titrate((576, 190), (570, 240), (563, 300), (556, 370))
    s.refill(545, concentration=1000)
    s.maintenance(540)
    s.refill(465)
    s.refill(385)
    s.refill(305)
    s.program(
        300,
        mode=ProgramMode.PERIODIC_BOLUS,
        bolus=(280, 30, 4),
        reason="Four 30 mcg boluses a day over a 280 mcg/day basal, for spasms on transfers.",
    )
    s.refill(225)
    s.refill(145)
    s.refill(60)


def _newly_implanted(s: Story) -> None:
    """Implanted this week: titration, first dose steps."""
    s.screening(25, 50, ScreeningOutcome.POSITIVE, "4")
    s.implant(SYNCHROMED_20, 6, tip_level="T10")
    s.start(6, dose=100, concentration=500)
    s.titrate((4, 125), (2, 150))


def _overdue_by_interval(s: Story) -> None:
    """Overdue by the 90-day maintenance interval; the alarm date is months away."""
    s.screening(420, 50, ScreeningOutcome.POSITIVE, "9")
    s.implant(SYNCHROMED_40, 400, tip_level="T7", catheter_cm="40.0")
    s.start(400, dose=50, concentration=500)
    s.titrate((397, 57), (392, 65), (386, 74), (380, 85), (373, 97), (366, 110), (359, 125), (352, 140), (345, 160))
    s.refill(330, concentration=1000)
    s.maintenance(330)
    s.refill(270)
    s.refill(182)
    s.refill(94)


def _due_this_week_interval(s: Story) -> None:
    """Maintenance, refill due this week (the 90-day visit interval)."""
    s.screening(520, 50, ScreeningOutcome.POSITIVE, "6")
    s.implant(SYNCHROMED_40, 500, tip_level="T10")
    s.start(500, dose=100, concentration=500)
    s.titrate((496, 130), (490, 165), (483, 210), (476, 270), (469, 340))
    s.refill(455, concentration=1000)
    s.maintenance(450)
    s.refill(367)
    s.refill(279)
    s.refill(183)
    s.refill(87)


def _overdue_alarm_in_two_days(s: Story) -> None:
    """Overdue, high risk (injury at T3): the alarm sounds in two days."""
    s.screening(350, 50, ScreeningOutcome.POSITIVE, "5")
    s.implant(SYNCHROMED_20, 330, tip_level="T11")
    s.start(330, dose=100, concentration=500)
    s.titrate((326, 130), (320, 165), (313, 210), (306, 260))
    s.refill(295, concentration=2000)
    s.maintenance(290)
    s.refill(210)
    s.refill(125)
    s.refill(85, alarm_in=2, notes="Partial fill.")


def _titration_acknowledged_increase(s: Story) -> None:
    """Titration with a 20 % step acknowledged over the 15 % cerebral-origin limit;
    negative 50 mcg screening, positive 75 mcg three days later."""
    s.screening(60, 50, ScreeningOutcome.NEGATIVE, "0")
    s.screening(57, 75, ScreeningOutcome.POSITIVE, "6")
    s.implant(SYNCHROMED_20, 30, tip_level="T7", catheter_cm="42.0")
    s.start(30, dose=150, concentration=500)
    s.titrate((27, 170), (22, 195))
    s.refill(16, concentration=1000)
    s.program(
        15,
        235,
        acknowledged=[domain.Rule.INCREASE_OVER_LIMIT],
        reason="Adductor spasticity still prevents seating and hygiene; a 20 % step agreed at the MDT review.",
    )
    s.program(8, 265)


def _due_within_30_days_alarm(s: Story) -> None:
    """Maintenance, refill due within the month (3 days before the alarm date)."""
    s.screening(380, 50, ScreeningOutcome.POSITIVE, "9")
    s.implant(PROMETRA_20, 360, tip_level="T8", catheter_cm="50.0")
    s.start(360, dose=50, concentration=500)
    s.titrate((357, 57), (352, 65), (346, 74), (339, 85), (332, 97), (325, 110))
    s.refill(318, concentration=1000)
    s.titrate((318, 125), (311, 140), (304, 160), (297, 180))
    s.maintenance(290)
    s.refill(240)
    s.refill(150)
    s.refill(70, alarm_in=20)


def _mri_planned_next_week(s: Story) -> None:
    """Maintenance, refill weeks away; MRI planned next week (SynchroMed: check after)."""
    s.screening(270, 50, ScreeningOutcome.POSITIVE, "5")
    s.implant(SYNCHROMED_20, 250, tip_level="T10")
    s.start(250, dose=100, concentration=500)
    s.titrate((246, 125), (240, 160), (233, 200), (226, 250))
    s.refill(215, concentration=2000)
    s.maintenance(210)
    s.refill(125)
    s.refill(38)
    s.event(
        EventKind.MRI_PLANNED,
        s.ahead(6, 16),
        "Brain MRI at 1.5 T to assess relapse activity. Pump check after the scan.",
        field_strength_tesla=Decimal("1.5"),
    )


def _discrepancy_less_than_expected(s: Story) -> None:
    """Last refill withdrew 2.6 mL less than expected (flagged: possible over-infusion)."""
    s.screening(460, 50, ScreeningOutcome.POSITIVE, "9")
    s.implant(PROMETRA_40, 440, tip_level="T9", catheter_cm="51.0")
    s.start(440, dose=50, concentration=500)
    s.titrate((437, 57), (432, 65), (426, 74), (419, 85), (412, 97), (405, 110), (398, 125), (391, 140), (384, 160))
    s.refill(370, concentration=1000)
    s.maintenance(365)
    s.program(300, 185)
    s.refill(285)
    s.refill(200)
    s.refill(115)
    s.refill(
        30,
        off_by="-2.6",
        notes="Withdrew 2.6 mL less than expected: possible over-infusion. No overdose signs; reported to the manufacturer.",
    )


def _past_alarm_date_travelling(s: Story) -> None:
    """Past the alarm date (yesterday) and past the refill-by date; lives in the Canaries."""
    s.screening(700, 50, ScreeningOutcome.POSITIVE, "5")
    s.implant(SYNCHROMED_40, 680, tip_level="T10")
    s.start(680, dose=100, concentration=500)
    s.titrate((676, 130), (670, 165), (663, 210), (656, 270), (649, 340))
    s.refill(640, concentration=1000)
    s.maintenance(635)
    for days_ago in (550, 460, 370, 280, 190):
        s.refill(days_ago)
    s.refill(100, alarm_in=-1)
    s.event(EventKind.LOW_RESERVOIR_ALARM, s.ago(1, 22, 30), "Patient phoned the on-call line: pump alarm sounding.")


def _titration_second_week(s: Story) -> None:
    """Titration, second week after implant (Prometra)."""
    s.screening(40, 50, ScreeningOutcome.POSITIVE, "5")
    s.implant(PROMETRA_20, 12, tip_level="T11", catheter_cm="47.0")
    s.start(12, dose=100, concentration=500)
    s.titrate((9, 125), (5, 150), (2, 180))


# ----------------------------------------------------------------------------- the patients


@dataclass(frozen=True)
class CaregiverSpec:
    name: str
    relationship: str
    phone: str = ""
    email: str = ""
    language: Language = Language.ENGLISH


@dataclass(frozen=True)
class PatientSpec:
    clinic: ClinicSpec
    mrn: str
    given_name: str
    family_name: str
    age: int
    birthday: tuple[int, int]  # (month, day): birth dates move with today so ages stay put
    diagnosis: Diagnosis
    language: Language
    phone: str
    email: str
    story: Callable[[Story], None]
    flags: dict[str, bool] = field(default_factory=dict)
    caregivers: tuple[CaregiverSpec, ...] = ()
    time_zone: str = ""
    contact_by_sms: bool = True

    @property
    def shows(self) -> str:
        """The story's summary: the first paragraph of its docstring, on one line."""
        return " ".join((self.story.__doc__ or "").split("\n\n")[0].split())


EN, ES = Language.ENGLISH, Language.SPANISH
PATIENTS = (
    PatientSpec(RIVERSIDE, "RNR-1001", "Margaret", "Okafor", 58, (3, 14), Diagnosis.MULTIPLE_SCLEROSIS, EN,
                "+447911123456", "margaret.okafor@example.org", _due_this_week_mri_planned,
                caregivers=(CaregiverSpec("Daniel Okafor", "husband", "+447400123456", "daniel.okafor@example.org"),)),
    PatientSpec(RIVERSIDE, "RNR-1002", "David", "Price", 41, (7, 2), Diagnosis.SPINAL_CORD_INJURY, EN,
                "+447723456789", "david.price@example.org", _overdue_alarm_tomorrow,
                flags={"sci_t6_or_above": True}),
    PatientSpec(RIVERSIDE, "RNR-1003", "Aisha", "Rahman", 16, (10, 9), Diagnosis.CEREBRAL_PALSY, EN,
                "+447534112233", "", _titration_paediatric, flags={"communication_difficulty": True},
                caregivers=(CaregiverSpec("Nasreen Rahman", "mother", "+447534112244", "nasreen.rahman@example.org"),)),
    PatientSpec(RIVERSIDE, "RNR-1004", "Thomas", "Hughes", 49, (1, 23), Diagnosis.BRAIN_INJURY, EN,
                "+447911223344", "thomas.hughes@example.org", _past_alarm_date, flags={"hearing_impairment": True},
                caregivers=(CaregiverSpec("Claire Hughes", "wife", "+447911223355", "claire.hughes@example.org"),)),
    PatientSpec(RIVERSIDE, "RNR-1005", "Eleanor", "Marsh", 72, (5, 30), Diagnosis.STROKE, EN,
                "+441614960000", "eleanor.marsh@example.org", _due_within_14_days, contact_by_sms=False),
    PatientSpec(RIVERSIDE, "RNR-1006", "George", "Bennett", 63, (11, 11), Diagnosis.MULTIPLE_SCLEROSIS, EN,
                "+447700123456", "george.bennett@example.org", _flex_program_after_mri),
    PatientSpec(RIVERSIDE, "RNR-1007", "Priya", "Shah", 35, (8, 19), Diagnosis.SPINAL_CORD_INJURY, EN,
                "+447456789012", "priya.shah@example.org", _discrepancy_more_than_expected),
    PatientSpec(RIVERSIDE, "RNR-1008", "William", "Clarke", 55, (2, 4), Diagnosis.MULTIPLE_SCLEROSIS, EN,
                "+447812345678", "william.clarke@example.org", _explanted_after_infection),
    PatientSpec(RIVERSIDE, "RNR-1009", "Susan", "Fletcher", 61, (6, 21), Diagnosis.MULTIPLE_SCLEROSIS, EN,
                "+447987654321", "susan.fletcher@example.org", _replaced_at_eri, flags={"screened_elsewhere": True}),
    PatientSpec(RIVERSIDE, "RNR-1010", "James", "O'Neill", 38, (9, 27), Diagnosis.SPINAL_CORD_INJURY, EN,
                "+447723111222", "james.oneill@example.org", _periodic_bolus,
                flags={"sci_t6_or_above": True, "withdrawal_history": True}),
    PatientSpec(RIVERSIDE, "RNR-1011", "Fatima", "Begum", 44, (4, 8), Diagnosis.MULTIPLE_SCLEROSIS, EN,
                "+447400987654", "fatima.begum@example.org", _newly_implanted),
    PatientSpec(RIVERSIDE, "RNR-1012", "Robert", "Lewis", 67, (12, 3), Diagnosis.STROKE, EN,
                "+441132345678", "", _overdue_by_interval, contact_by_sms=False,
                caregivers=(CaregiverSpec("Karen Lewis", "daughter", "+447723999888", "karen.lewis@example.org"),)),
    PatientSpec(SANTA_ANA, "CSA-2001", "Carmen", "García López", 57, (3, 2), Diagnosis.MULTIPLE_SCLEROSIS, ES,
                "+34612345678", "carmen.garcia@example.org", _due_this_week_interval,
                caregivers=(CaregiverSpec("Elena López García", "hija", "+34612345679", "elena.lopez@example.org", ES),)),
    PatientSpec(SANTA_ANA, "CSA-2002", "Javier", "Martínez Ruiz", 33, (5, 17), Diagnosis.SPINAL_CORD_INJURY, ES,
                "+34687123456", "javier.martinez@example.org", _overdue_alarm_in_two_days,
                flags={"sci_t6_or_above": True},
                caregivers=(CaregiverSpec("Pablo Martínez Ruiz", "hermano", "+34687123457", "", ES),)),
    PatientSpec(SANTA_ANA, "CSA-2003", "Lucía", "Fernández Moreno", 24, (7, 25), Diagnosis.CEREBRAL_PALSY, ES,
                "+34622334455", "lucia.fernandez@example.org", _titration_acknowledged_increase,
                flags={"communication_difficulty": True},
                caregivers=(CaregiverSpec("Rosa Moreno Díaz", "madre", "+34622334466", "rosa.moreno@example.org", ES),)),
    PatientSpec(SANTA_ANA, "CSA-2004", "Antonio", "Sánchez Gil", 52, (10, 30), Diagnosis.BRAIN_INJURY, ES,
                "+34655443322", "antonio.sanchez@example.org", _due_within_30_days_alarm),
    PatientSpec(SANTA_ANA, "CSA-2005", "María José", "Romero Vega", 46, (12, 12), Diagnosis.MULTIPLE_SCLEROSIS, ES,
                "+34699887766", "mariajose.romero@example.org", _mri_planned_next_week),
    PatientSpec(SANTA_ANA, "CSA-2006", "Pedro", "Navarro Castillo", 69, (1, 8), Diagnosis.STROKE, ES,
                "", "", _discrepancy_less_than_expected),  # no contact details: staff are told
    PatientSpec(SANTA_ANA, "CSA-2007", "Isabel", "Torres Ramos", 39, (6, 6), Diagnosis.SPINAL_CORD_INJURY, ES,
                "+34634567890", "isabel.torres@example.org", _past_alarm_date_travelling, time_zone="Atlantic/Canary"),
    PatientSpec(SANTA_ANA, "CSA-2008", "Alejandro", "Ortiz Delgado", 27, (9, 3), Diagnosis.SPINAL_CORD_INJURY, ES,
                "+34611223344", "alejandro.ortiz@example.org", _titration_second_week),
)  # fmt: skip


# ----------------------------------------------------------------------------- the messages
# Seeding sends through these, never through the console: its output stays a short summary,
# and the demo's worker prints what it sends itself. Each stands for one real outcome.


class DemoSms(SmsBackend):
    """An SMS gateway that accepts every text, silently."""

    def send(self, out: Outgoing) -> str:
        return f"demo-{out.message_id}"


class DeadNumberSms(SmsBackend):
    """Twilio's answer for a number that no longer exists (a permanent failure)."""

    def send(self, out: Outgoing) -> str:
        raise TransportError("Twilio 400 code 21614: 'To' number is not a valid mobile number (demo)", permanent=True)


class WorkerCrash(BaseException):
    """A worker killed in the middle of a send: its claim expires and the message is sent again.

    A BaseException, like the SystemExit of a forced shutdown: the send path handles
    Exception (a backend's bug), and nothing can handle a SIGKILL.
    """


class CrashingSms(SmsBackend):
    def send(self, out: Outgoing) -> str:
        raise WorkerCrash(f"message {out.message_id}")


class MailServerDown(BaseEmailBackend):
    """The clinic's mail server dropping the connection (a transient failure: retried)."""

    def send_messages(self, email_messages: Any) -> int:
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed (demo)")


QUIET_EMAIL = "django.core.mail.backends.locmem.EmailBackend"
# Who does what in the replayed day (MRNs from PATIENTS).
OPTS_OUT_BY_SMS = "RNR-1007"  # replies STOP in the evening
DROPS_EMAIL = "RNR-1006"  # asks for texts only: the address is removed, its emails cancelled


def _backend(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class MessageHistory:
    """Replays the reminder system's last day through `notifications.services`.

    Moments are Riverside's (London) wall clock yesterday, so they are in the past at any
    hour today and never in a DST gap. Which messages fail is chosen by rule (the first text
    to a caregiver, the first non-critical text to a patient, staff escalation emails),
    because which reminders are due yesterday depends on today's date.
    """

    def __init__(self, clinics: dict[str, Clinic], staff: dict[int, dict[Role, Any]], now: datetime) -> None:
        self.clinics = list(clinics.values())
        self.staff = staff
        self.now = now
        self.day = domain.local_date(now, zoneinfo_of(RIVERSIDE)) - timedelta(days=1)

    def at(self, hour: int, minute: int = 0) -> datetime:
        return datetime.combine(self.day, time(hour, minute), tzinfo=zoneinfo_of(RIVERSIDE))

    def replay(self) -> None:
        sweep = self.at(12)
        self._plan(sweep)
        dead_pk = self._dispatch(sweep)
        self._delivery_receipts(sweep + timedelta(minutes=2))
        self._resolve_dead_number(dead_pk, self.at(15))
        self._drop_email(self.at(16))
        stop = self.at(18, 30)
        self._opt_out(stop)
        self._acknowledge_opt_out(stop + timedelta(minutes=30))
        # Now: what is due is left for the demo's worker (its first dispatch sweep sends it).
        self._plan(self.now)

    def _plan(self, at: datetime) -> None:
        try:
            messaging.plan_all(at)
        except messaging.PlanningFailed as exc:
            raise CommandError(f"planning the demo messages failed: {exc}") from exc

    def _dispatch(self, at: datetime) -> int:
        """Yesterday's dispatch sweep. Returns the message that failed permanently."""
        ids = messaging.dispatch_due(at)
        rows = {m.pk: m for m in Message.objects.filter(pk__in=ids)}
        staff_mail = [pk for pk in ids if rows[pk].recipient_kind == RecipientKind.STAFF]
        caregiver_sms = [pk for pk in ids if rows[pk].channel == "sms" and rows[pk].recipient_kind == RecipientKind.CAREGIVER]
        patient_sms = [
            pk
            for pk in ids
            if rows[pk].channel == "sms" and rows[pk].recipient_kind == RecipientKind.PATIENT and not rows[pk].critical
        ]
        if len(staff_mail) < 3 or not caregiver_sms or not patient_sms:
            raise CommandError(
                "the demo's replayed day has too few messages due: "
                f"{len(staff_mail)} staff emails, {len(caregiver_sms)} caregiver texts, {len(patient_sms)} patient texts."
            )
        # Two escalation emails whose send tasks were lost: still due; the worker requeues them.
        lost = set(staff_mail[-2:])
        outcome = {staff_mail[0]: MailServerDown, caregiver_sms[0]: DeadNumberSms, patient_sms[0]: CrashingSms}
        for pk in ids:
            if pk not in lost:
                self._send(pk, at, outcome.get(pk))
        # Sends that failed raised escalations, whose emails are due at once: the same sweep sends them.
        while more := messaging.dispatch_due(at):
            for pk in more:
                self._send(pk, at, None)
        return caregiver_sms[0]

    def _send(self, pk: int, at: datetime, outcome: type | None) -> None:
        sms = outcome if outcome is not None and issubclass(outcome, SmsBackend) else DemoSms
        email = _backend(outcome) if outcome is MailServerDown else QUIET_EMAIL
        # After a crash the message stays "sending" with an in-flight attempt, as after a real one.
        with override_settings(PUMPTRACK_SMS_BACKEND=_backend(sms), EMAIL_BACKEND=email), contextlib.suppress(WorkerCrash):
            messaging.send_message(pk, at, worker="seed_demo")

    def _delivery_receipts(self, at: datetime) -> None:
        """Twilio's status callbacks: every text delivered but the last (still "sent")."""
        sent = list(
            Message.objects.filter(clinic__in=self.clinics, channel="sms", status=Status.SENT)
            .order_by("pk")
            .values_list("provider_id", flat=True)
        )
        for provider_id in sent[:-1]:
            messaging.record_delivery_status(provider_id, "delivered", "", at)

    def _resolve_dead_number(self, message_pk: int, at: datetime) -> None:
        esc = Escalation.objects.get(reason=EscalationReason.DELIVERY_FAILED, cycle=f"message:{message_pk}")
        message = Message.objects.select_related("caregiver").get(pk=message_pk)
        name = message.caregiver.name if message.caregiver else "the caregiver"
        messaging.resolve_escalation(
            esc,
            by=self.staff[esc.clinic_id][Role.NURSE],
            now=at,
            resolution=f"Phoned the patient: {name}'s mobile number is out of service. "
            "The family will send the new number; the block stays until it is recorded.",
        )

    def _drop_email(self, at: datetime) -> None:
        patient = Patient.objects.get(clinic__in=self.clinics, mrn=DROPS_EMAIL)
        # As the patient page does: save, then re-plan the pumps (here: at the final plan).
        patient.email, patient.contact_by_email = "", False
        patient.save(update_fields=["email", "contact_by_email"])
        services.announce_change(list(patient.pumps.values_list("pk", flat=True)))

    def _opt_out(self, at: datetime) -> None:
        patient = Patient.objects.get(clinic__in=self.clinics, mrn=OPTS_OUT_BY_SMS)
        messaging.handle_inbound_sms(str(patient.phone), "STOP", at)

    def _acknowledge_opt_out(self, at: datetime) -> None:
        patient = Patient.objects.get(clinic__in=self.clinics, mrn=OPTS_OUT_BY_SMS)
        esc = Escalation.objects.get(patient=patient, reason=EscalationReason.OPTED_OUT, status=EscalationStatus.OPEN)
        messaging.acknowledge_escalation(esc, by=self.staff[esc.clinic_id][Role.COORDINATOR], now=at)


def zoneinfo_of(spec: ClinicSpec) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(spec.time_zone)


def demo_addresses() -> set[str]:
    """Every email address and phone number the demo patients and caregivers use."""
    found = set()
    for p in PATIENTS:
        found |= {p.email, p.phone} | {a for c in p.caregivers for a in (c.email, c.phone)}
    return found - {""}


# ----------------------------------------------------------------------------- the command


@dataclass
class Tally:
    clinics_created: int = 0
    users_created: int = 0
    patients_created: int = 0
    patients_existing: int = 0
    lines: list[str] = field(default_factory=list)


class Command(BaseCommand):
    help = (
        "Create demo data: two clinics, staff logins for every role (one shared password) and "
        "twenty patients whose pumps show every state worth seeing today: titration, maintenance, "
        "refill due this week or this month, overdue, past the alarm date, a flagged residual "
        "discrepancy, an explanted and a replaced pump; and their messages (reminders and safety "
        "warnings by email and SMS, in English and Spanish) in every state, with staff escalations "
        "open, acknowledged and resolved. Idempotent: existing clinics, users and "
        "patients (by clinic and MRN) are left alone. The states are relative to the day the "
        "histories were built, so they drift: --reset deletes the demo clinics' patients and pump "
        "records (everything recorded in those two clinics) and builds them again for today."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--password",
            help=f'Password for the demo logins (default "{DEFAULT_PASSWORD}" for new ones). '
            "When given, existing demo logins are reset to it too.",
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="Delete every patient, pump, clinical record, message and escalation of the demo clinics "
            "(and the demo addresses' opt-outs), restore their default policy, and rebuild the histories "
            "relative to today. Logins are kept.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        password: str | None = options["password"]
        if password is not None and not password:
            raise CommandError("--password must not be empty.")
        self.verbosity = int(options["verbosity"])
        tally = Tally()
        self._check_catalogue()

        with transaction.atomic():
            clinics = {spec.name: self._clinic(spec, reset=options["reset"], tally=tally) for spec in CLINICS}
            if options["reset"]:
                self._reset(list(clinics.values()))
            staff = self._staff(clinics, password, tally)

        # One transaction for the patients and their messages: a failure leaves no half-built
        # patient behind for the next run to skip, and the re-plans each record announces
        # (at the real now, once committed) come after the message history replayed from
        # yesterday, never before it.
        # A step for each patient, the message history, and the commit (the re-plans each
        # record announced run then: about half the time). Not at verbosity 2: the
        # escalations' log lines (stderr, the same terminal) would be drawn over.
        bar = ProgressBar(len(PATIENTS) + 2, label="demo data", stream=self.stdout, enabled=self.verbosity == 1)
        with bar, _quiet_escalation_log(self.verbosity):
            with transaction.atomic():
                for spec in PATIENTS:
                    clinic = clinics[spec.clinic.name]
                    self._patient(spec, clinic, staff[clinic.pk], now, tally)
                    bar.advance()
                if tally.patients_created and not tally.patients_existing:
                    # Only for a complete, new set: replaying yesterday over messages a running
                    # demo already planned for later moments would cancel some of them.
                    MessageHistory(clinics, staff, now).replay()
                    self._book_visits(list(clinics.values()), staff, now)
                bar.advance()
            bar.advance()

        self._report(clinics, password, now, tally)

    # -- appointments

    def _book_visits(self, clinics: list[Clinic], staff: dict[int, dict[Role, Any]], now: datetime) -> None:
        """Book the next visit of pumps due in 5 to 14 days, two days before their refill-by
        date at 10:00: the week view has visits, and the pumps due sooner stay on the
        worklist's "due without an appointment" group."""
        for clinic in clinics:
            today = domain.local_date(now, clinic.tz)
            due = Pump.objects.filter(
                patient__clinic=clinic,
                status=PumpStatus.ACTIVE,
                refill_by__gte=today + timedelta(days=5),
                refill_by__lte=today + timedelta(days=14),
            ).select_related("patient__clinic")
            for pump in due.order_by("refill_by", "pk"):
                assert pump.refill_by is not None
                starts_at = datetime.combine(pump.refill_by - timedelta(days=2), time(10, 0), tzinfo=clinic.tz)
                appointments.book_appointment(pump, starts_at, "ITB clinic, room 2", "", staff[clinic.pk][Role.NURSE], now)

    # -- setup

    def _check_catalogue(self) -> None:
        numbers = {SYNCHROMED_20, SYNCHROMED_40, PROMETRA_20, PROMETRA_40}
        missing = numbers - set(PumpModel.objects.filter(model_number__in=numbers).values_list("model_number", flat=True))
        if missing:
            raise CommandError(f"Pump models {', '.join(sorted(missing))} are missing: run `manage.py migrate` first.")

    def _clinic(self, spec: ClinicSpec, *, reset: bool, tally: Tally) -> Clinic:
        clinic = Clinic.objects.filter(name=spec.name).first()
        if clinic is not None and not reset:
            return clinic
        if clinic is None:
            clinic = Clinic(name=spec.name)
            tally.clinics_created += 1
        clinic.time_zone, clinic.phone, clinic.email = spec.time_zone, spec.phone, spec.email
        clinic.notification_email = spec.notification_email
        # The default policy: the model fields' defaults, which come from clinical.md.
        for name in POLICY_FIELDS:
            setattr(clinic, name, Clinic._meta.get_field(name).get_default())
        self._validate(clinic, spec.name)
        clinic.save()
        return clinic

    def _reset(self, clinics: list[Clinic]) -> None:
        pumps = Pump.objects.filter(patient__clinic__in=clinics)
        try:
            # Clinical records protect their pump, pumps their patient: delete leaves first.
            for model in (ClinicalEvent, Refill, Program):
                model.objects.filter(pump__in=pumps).delete()
            pumps.delete()
            Patient.objects.filter(clinic__in=clinics).delete()  # their messages and escalations go too
            # Opt-outs and dead numbers are kept by address, not by patient.
            ContactBlock.objects.filter(address__in=demo_addresses()).delete()
        except ProtectedError as exc:
            names = sorted({type(obj).__name__ for obj in exc.protected_objects})
            raise CommandError(f"--reset cannot delete the demo records: {', '.join(names)} rows still refer to them.") from exc

    def _staff(self, clinics: dict[str, Clinic], password: str | None, tally: Tally) -> dict[int, dict[Role, Any]]:
        self._user(ADMIN_USERNAME, "Demo", "Administrator", password, tally, superuser=True)
        staff: dict[int, dict[Role, Any]] = {}
        for spec in CLINICS:
            clinic = clinics[spec.name]
            staff[clinic.pk] = {}
            for member in spec.staff:
                user = self._user(spec.username(member.role), member.first_name, member.last_name, password, tally)
                Membership.objects.update_or_create(user=user, clinic=clinic, defaults={"role": member.role})
                staff[clinic.pk][member.role] = user
        return staff

    def _user(
        self, username: str, first_name: str, last_name: str, password: str | None, tally: Tally, *, superuser: bool = False
    ) -> AbstractUser:
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=username,
            defaults={
                "first_name": first_name,
                "last_name": last_name,
                "email": f"{username}@example.org",
                "is_staff": True,
                "is_superuser": superuser,
            },
        )
        if created or password is not None:
            # Hashing is slow: only new logins, or all of them when --password asks for it.
            user.set_password(password or DEFAULT_PASSWORD)
            user.is_active = True
            user.save()
        tally.users_created += int(created)
        return user  # type: ignore[no-any-return]

    # -- patients

    def _patient(self, spec: PatientSpec, clinic: Clinic, staff: dict[Role, Any], now: datetime, tally: Tally) -> None:
        if Patient.objects.filter(clinic=clinic, mrn=spec.mrn).exists():
            tally.patients_existing += 1
            tally.lines.append(f"  {spec.mrn} {spec.given_name} {spec.family_name}: already present, left alone")
            return
        today = domain.local_date(now, clinic.tz)
        patient = Patient(
            clinic=clinic,
            mrn=spec.mrn,
            given_name=spec.given_name,
            family_name=spec.family_name,
            birth_date=_birth_date(today, spec.age, spec.birthday),
            diagnosis=spec.diagnosis,
            spasticity_origin=ORIGIN_BY_DIAGNOSIS[spec.diagnosis],
            email=spec.email,
            phone=spec.phone,
            language=spec.language,
            time_zone=spec.time_zone,
            contact_by_email=bool(spec.email),
            contact_by_sms=spec.contact_by_sms,
            **spec.flags,
        )
        self._validate(patient, spec.mrn)
        patient.save()
        for c in spec.caregivers:
            caregiver = Caregiver(
                patient=patient, name=c.name, relationship=c.relationship, phone=c.phone, email=c.email, language=c.language
            )
            self._validate(caregiver, f"{spec.mrn} caregiver {c.name}")
            caregiver.save()
        try:
            spec.story(Story(patient, staff, now))
        except (ValidationError, services.DoseChangeRefused) as exc:
            # A story that breaks a rule is a bug in this file; name the patient.
            raise CommandError(f"{spec.mrn} ({spec.story.__name__}): {exc}") from exc
        tally.patients_created += 1
        tally.lines.append(f"  {spec.mrn} {spec.given_name} {spec.family_name}: {spec.shows}")

    @staticmethod
    def _validate(obj: Clinic | Patient | Caregiver, label: str) -> None:
        try:
            obj.full_clean(validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            raise CommandError(f"{label}: {exc}") from exc

    # -- output

    def _report(self, clinics: dict[str, Clinic], password: str | None, now: datetime, tally: Tally) -> None:
        if self.verbosity < 1:
            return
        out = self.stdout.write
        if self.verbosity >= 2:
            for line in tally.lines:
                out(line)
        out(
            f"Demo data: {len(clinics)} clinics ({tally.clinics_created} created), {tally.patients_created} patients created, "
            f"{tally.patients_existing} already present, {tally.users_created} logins created."
        )
        for clinic in clinics.values():
            out(f"  {clinic.name} ({clinic.time_zone}): {_states(clinic, now)}")
        out(f"  Messages: {_message_states(list(clinics.values()))}")
        log = Path(settings.VAR_DIR) / "demo" / "worker.log"  # where bin/demo puts it
        shown = log.relative_to(settings.BASE_DIR) if log.is_relative_to(settings.BASE_DIR) else log
        out(
            "  The Celery worker sends what is due: with the default console backends each SMS and email is "
            f"printed in its log (bin/demo: {shown})."
        )

        out("")
        out(f"Sign in at {settings.SITE_URL.rstrip('/')}/admin/ once the web server runs (bin/demo starts it).")
        if password is not None:
            out("Password for every login below: the one given with --password.")
        else:
            out(f'Password for every login below: "{DEFAULT_PASSWORD}" (unless changed since; --password resets it).')
        rows = [(ADMIN_USERNAME, "superuser", "all clinics")]
        for spec in CLINICS:
            rows += [(spec.username(m.role), m.role.label.lower(), spec.name) for m in spec.staff]
        out(f"  {'username':<14}{'role':<13}clinic")
        for username, role, clinic_name in rows:
            out(f"  {username:<14}{role:<13}{clinic_name}")


@contextlib.contextmanager
def _quiet_escalation_log(verbosity: int) -> Iterator[None]:
    """The demo raises a dozen escalations on purpose: the summary counts them, so their
    log lines (one each, on stderr) are shown only at verbosity 2 and above."""
    log = logging.getLogger("notifications.services")
    level = log.level
    if verbosity < 2:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _birth_date(today: date, age: int, birthday: tuple[int, int]) -> date:
    month, day = birthday
    born = date(today.year - age, month, day)
    # Keep the stated age today: a birthday later this year means born a year earlier.
    return born if (month, day) <= (today.month, today.day) else born.replace(year=born.year - 1)


def _message_states(clinics: list[Clinic]) -> str:
    """How many messages are in each state, and the escalations by status."""
    messages = Message.objects.filter(clinic__in=clinics)
    states = ", ".join(f"{label.lower()} {messages.filter(status=value).count()}" for value, label in Status.choices)
    escalations = Escalation.objects.filter(clinic__in=clinics)
    handling = ", ".join(
        f"{label.lower()} {escalations.filter(status=value).count()}" for value, label in EscalationStatus.choices
    )
    critical = escalations.filter(status=EscalationStatus.OPEN, severity=Severity.CRITICAL).count()
    return f"{states}; escalations {handling} ({critical} open critical)"


def _states(clinic: Clinic, now: datetime) -> str:
    """How many active pumps are in each state on the clinic's today."""
    today = domain.local_date(now, clinic.tz)
    pumps = Pump.objects.filter(patient__clinic=clinic)
    active = pumps.filter(status=PumpStatus.ACTIVE)
    counts = {
        "titration": active.filter(phase=Phase.TITRATION).count(),
        "maintenance": active.filter(phase=Phase.MAINTENANCE).count(),
        "due within 7 days": active.filter(refill_by__gte=today, refill_by__lte=today + timedelta(days=7)).count(),
        "due within 30 days": active.filter(refill_by__gte=today, refill_by__lte=today + timedelta(days=30)).count(),
        "overdue": active.filter(refill_by__lt=today, alarm_on__gte=today).count(),
        "past the alarm date": active.filter(alarm_on__lt=today).count(),
        "explanted": pumps.filter(status=PumpStatus.EXPLANTED).count(),
        "replaced": pumps.filter(status=PumpStatus.REPLACED).count(),
        "flagged residual discrepancies": Refill.objects.filter(pump__in=pumps, discrepancy_flagged=True).count(),
    }
    return ", ".join(f"{label} {n}" for label, n in counts.items() if n)
