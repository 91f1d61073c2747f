"""The planning sweep (`notifications.services.plan_all`) walks the register page by page.

It reads active pumps by keyset pages instead of one list of every id (which grew with the
register: bench/RESULTS.md, issue 6), then the ended pumps that still hold unsent messages.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from factories import IMPLANTED_AT, ClinicFactory, implanted_pump, screened_patient

from notifications import services
from notifications.models import OPEN_STATES, Kind, Message
from pumps.models import Pump, PumpStatus

NOW = IMPLANTED_AT + timedelta(hours=3)

pytestmark = pytest.mark.django_db


def a_pump(n: int) -> Pump:
    clinic = ClinicFactory(time_zone="Europe/London")
    return implanted_pump(patient=screened_patient(clinic=clinic, email=f"patient{n}@example.org", phone=""))


def open_messages(pump: Pump) -> int:
    return Message.objects.filter(pump=pump, status__in=OPEN_STATES).exclude(kind=Kind.ESCALATION).count()


def test_the_sweep_plans_every_active_pump_once_across_pages() -> None:
    pumps = [a_pump(n) for n in range(5)]
    pages: list[int] = []

    services.plan_all(NOW, batch_size=2, progress=pages.append)

    assert pages == [2, 2, 1]
    assert all(open_messages(pump) > 0 for pump in pumps)


def test_the_sweep_clears_an_ended_pump_that_still_holds_unsent_messages() -> None:
    pumps = [a_pump(n) for n in range(5)]
    services.plan_all(NOW, batch_size=2)
    ended = pumps[2]
    before = {pump.pk: open_messages(pump) for pump in pumps}
    # Ended behind the services' back (a data fix, a restore): its reminders are still open.
    Pump.objects.filter(pk=ended.pk).update(status=PumpStatus.EXPLANTED)
    pages: list[int] = []

    result = services.plan_all(NOW, batch_size=2, progress=pages.append)

    assert pages == [2, 2, 1]  # four active pumps, then the ended one
    assert open_messages(ended) == 0 and result.cancelled == before[ended.pk]
    assert all(open_messages(pump) == before[pump.pk] for pump in pumps if pump != ended)
