"""The pump page's pictures: reservoir volume and dose history (pumps/charts.py).

The worked example (tests/factories.py): a 40 mL SynchroMed II filled full at 500 mcg/mL on
2027-01-04 09:00 UTC, 200 mcg/day (0.4 mL/day), 2 mL alarm. At the refill 28 days later the
expected residual is 40 - 28 x 0.4 = 28.80 mL; 25.00 mL withdrawn is a discrepancy of
-3.80 mL, beyond the 2 mL limit: flagged. Refilled to 40 mL, the reservoir reaches 2 mL
after (40 - 2) / 0.4 = 95 days: on 2027-05-07.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from admin_support import NOW, VISIT_AT, client_for, staff
from defusedxml import ElementTree
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from factories import IMPLANTED_AT, fill, implanted_pump, screened_patient

from patients.models import Role
from pumps import charts, services
from pumps.models import Program, Pump, Refill

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"


def _history(pump: Pump) -> tuple[list[Program], list[Refill]]:
    pump = Pump.objects.select_related("patient__clinic", "model").get(pk=pump.pk)
    return list(pump.programs.all()), list(pump.refills.all())


def _flagged_pump(**patient: Any) -> Pump:
    pump = implanted_pump(patient=screened_patient(**patient) if patient else None)
    fill(pump, at=VISIT_AT, withdrawn_ml="25.00", volume_added_ml="40")
    return Pump.objects.select_related("patient__clinic", "model").get(pk=pump.pk)


def _reservoir(pump: Pump, now: datetime = NOW) -> charts.ReservoirChart:
    programs, refills = _history(pump)
    return charts.reservoir_chart(pump, programs, refills, now)


def test_the_recorded_line_rises_at_each_fill_and_declines_to_the_expected_residual() -> None:
    chart = _reservoir(_flagged_pump())

    assert [(p.at, p.volume_ml) for p in chart.recorded] == [
        (IMPLANTED_AT, Decimal("0.00")),  # empty before the initial fill
        (IMPLANTED_AT, Decimal("40.00")),  # the rise to the volume after fill
        (VISIT_AT, Decimal("28.80")),  # the expected residual at the refill
        (VISIT_AT, Decimal("40.00")),  # refilled
    ]


def test_the_predicted_line_ends_at_the_alarm_volume_on_the_alarm_date() -> None:
    chart = _reservoir(_flagged_pump())

    assert chart.alarm_on == date(2027, 5, 7) == VISIT_AT.date() + timedelta(days=95)
    assert chart.predicted[0].at == VISIT_AT and chart.predicted[0].volume_ml == Decimal("40.00")
    end = chart.predicted[-1]
    assert end.volume_ml == chart.alarm_ml == Decimal("2.00")
    assert end.at.astimezone(chart.tz).date() == chart.alarm_on
    assert chart.refill_by == date(2027, 3, 3)  # titration: 30 days after the visit


def test_the_prediction_agrees_with_the_pumps_stored_dates() -> None:
    pump = _flagged_pump()
    chart = _reservoir(pump)
    state = services.pump_state(pump, NOW)

    assert (chart.alarm_on, chart.refill_by) == (pump.alarm_on, pump.refill_by) == (state.alarm_on, state.refill_by)


def test_the_prediction_bends_at_a_later_dose_change() -> None:
    pump = _flagged_pump()
    change_at = VISIT_AT + timedelta(days=10)
    services.change_program(
        pump,
        services.ProgramInput(effective_at=change_at, dose_mcg_per_day=Decimal("250"), concentration_mcg_per_ml=Decimal("500")),
        by=None,
        now=change_at,
    )
    pump.refresh_from_db()
    chart = _reservoir(pump, change_at)

    # 10 days at 0.4 mL/day, then 0.5 mL/day: 36 mL left, 2 mL reached after 68 days.
    assert [(p.at, p.volume_ml) for p in chart.predicted[:2]] == [(VISIT_AT, Decimal("40.00")), (change_at, Decimal("36.00"))]
    assert chart.predicted[-1].volume_ml == Decimal("2.00")
    assert chart.predicted[-1].at.date() == chart.alarm_on == change_at.date() + timedelta(days=68) == pump.alarm_on


def test_a_flagged_refill_is_marked_with_withdrawn_and_expected() -> None:
    chart = _reservoir(_flagged_pump())

    initial, refill = chart.refills
    assert initial.initial and not initial.flagged
    assert (refill.expected_residual_ml, refill.withdrawn_ml, refill.discrepancy_ml) == (
        Decimal("28.80"),
        Decimal("25.00"),
        Decimal("-3.80"),
    )
    assert refill.flagged and chart.flagged == [refill]


def test_the_svg_marks_the_flagged_refill_in_red_with_a_label() -> None:
    svg = charts.reservoir_svg(_reservoir(_flagged_pump()))
    root = ElementTree.fromstring(svg)

    flagged = [g for g in root.iter(f"{SVG}g") if g.get("class") == "pt-chart-flagged"]
    assert len(flagged) == 1
    marker = flagged[0].find(f"{SVG}path")
    assert marker is not None and marker.get("fill") == charts.RED
    label = flagged[0].find(f"{SVG}text")
    assert label is not None and label.get("fill") == charts.RED
    assert "-3.8 mL" in (label.text or "") and "withdrawn 25" in (label.text or "") and "expected 28.8" in (label.text or "")


def test_an_unflagged_refill_is_not_red() -> None:
    pump = implanted_pump()
    fill(pump, at=VISIT_AT, withdrawn_ml="28.50", volume_added_ml="40")
    svg = charts.reservoir_svg(_reservoir(pump))

    assert "pt-chart-flagged" not in svg and "pt-chart-withdrawn" in svg


def test_the_svg_is_an_accessible_image_with_title_desc_axes_and_legend() -> None:
    chart = _reservoir(_flagged_pump())
    root = ElementTree.fromstring(charts.reservoir_svg(chart))

    assert root.get("role") == "img"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and desc is not None
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    assert chart.label in (title.text or "")
    assert "2 mL on 2027-05-07" in (desc.text or "") and "Refill by 2027-03-03" in (desc.text or "")
    assert "Flagged discrepancy" in (desc.text or "")
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert "reservoir volume (mL)" in texts and "40 mL" in texts and "0 mL" in texts
    assert any(re.fullmatch(r"2027-\d\d-\d\d", t) for t in texts)  # date ticks
    assert {"alarm 2027-05-07", "refill by 2027-03-03", "today"} <= set(texts)
    assert {"predicted to alarm", "alarm volume", "withdrawn", "flagged discrepancy"} <= set(texts)  # the legend


def test_the_dose_history_is_drawn_as_steps() -> None:
    pump = _flagged_pump()
    change_at = VISIT_AT + timedelta(days=10)
    services.change_program(
        pump,
        services.ProgramInput(effective_at=change_at, dose_mcg_per_day=Decimal("250"), concentration_mcg_per_ml=Decimal("500")),
        by=None,
        now=change_at,
    )
    programs, _ = _history(pump)
    now = change_at + timedelta(days=5)
    chart = charts.dose_chart(pump, programs, now)

    assert [(s.starts_at, s.dose_mcg_per_day) for s in chart.steps] == [
        (IMPLANTED_AT, Decimal("200.000")),
        (change_at, Decimal("250.000")),
    ]
    root = ElementTree.fromstring(charts.dose_svg(chart))
    line = next(p for p in root.iter(f"{SVG}polyline") if p.get("class") == "pt-chart-dose")
    points = [tuple(map(float, xy.split(","))) for xy in (line.get("points") or "").split()]
    # Steps: every change is a vertical rise at one x, every stretch is flat.
    assert len(points) == 4
    assert points[0][1] == points[1][1] and points[1][0] == points[2][0] and points[2][1] == points[3][1]
    assert points[2][1] < points[1][1]  # the higher dose is drawn higher
    assert root.get("role") == "img" and root.find(f"{SVG}title") is not None
    assert "now 250 mcg/day" in (root.findtext(f"{SVG}desc") or "")


def test_a_pump_without_a_fill_draws_an_empty_chart_that_says_so() -> None:
    from factories import implant

    pump = Pump.objects.select_related("patient__clinic", "model").get(pk=implant().pk)
    chart = charts.reservoir_chart(pump, [], [], NOW)

    assert chart.recorded == [] and chart.predicted == []
    svg = charts.reservoir_svg(chart)
    assert "No fill recorded" in svg and ElementTree.fromstring(svg).get("role") == "img"


def test_an_ended_pump_has_no_prediction() -> None:
    pump = _flagged_pump()
    services.end_pump(pump, status="explanted", on=date(2027, 2, 10), reason="infection", now=NOW + timedelta(days=10))
    pump = Pump.objects.select_related("patient__clinic", "model").get(pk=pump.pk)

    chart = _reservoir(pump, NOW + timedelta(days=10))
    assert chart.predicted == [] and chart.alarm_on is None and len(chart.refills) == 2


# ----------------------------------------------------------------------------- on the pump page


@pytest.mark.usefixtures("frozen_clock")
def test_the_pump_page_shows_both_charts_and_their_tables(clinic_a: Any) -> None:
    pump = _flagged_pump(clinic=clinic_a)
    page = client_for(staff((clinic_a, Role.NURSE))).get(reverse("admin:pumps_pump_change", args=[pump.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="pt-reservoir-chart"' in html and 'id="pt-dose-chart"' in html and 'role="img"' in html
    assert "<summary>Reservoir chart as a table</summary>" in html and "<summary>Dose chart as a table</summary>" in html
    table = html.split("<summary>Reservoir chart as a table</summary>")[1].split("</details>")[0]
    assert "28.80" in table and "25.00" in table and "-3.80" in table and "⚑ flagged" in table
    assert "2027-05-07" in table and "2027-03-03" in table
    assert "http://" not in html.split('id="pt-reservoir-chart"')[1].split("</svg>")[0].replace("http://www.w3.org/2000/svg", "")


@pytest.mark.usefixtures("frozen_clock")
def test_the_pump_page_answers_in_a_constant_number_of_queries(clinic_a: Any) -> None:
    nurse = staff((clinic_a, Role.NURSE))
    client = client_for(nurse)
    short = implanted_pump(patient=screened_patient(clinic=clinic_a))
    long = implanted_pump(patient=screened_patient(clinic=clinic_a))
    for day in (5, 10, 15, 20, 25):
        fill(long, at=IMPLANTED_AT + timedelta(days=day), withdrawn_ml="36", volume_added_ml="40")
        change_at = IMPLANTED_AT + timedelta(days=day, hours=1)
        dose = Decimal(200 + day)
        services.change_program(
            long,
            services.ProgramInput(effective_at=change_at, dose_mcg_per_day=dose, concentration_mcg_per_ml=Decimal("500")),
            by=None,
            now=change_at,
            acknowledged=["increase_too_soon"],
            reason="test history",
        )

    def count(pump: Pump) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(reverse("admin:pumps_pump_change", args=[pump.pk])).status_code == 200
        return len(ctx.captured_queries)

    count(short)  # warm caches (content types, sessions)
    assert count(long) == count(short)


def test_times_are_read_in_the_clinics_zone() -> None:
    # A clinic far from UTC: the alarm date and the predicted end are on its calendar.
    from factories import ClinicFactory

    clinic = ClinicFactory(time_zone="Pacific/Auckland")
    pump = implanted_pump(patient=screened_patient(clinic=clinic), implanted_at=datetime(2027, 1, 4, 20, 0, tzinfo=UTC))
    chart = _reservoir(Pump.objects.select_related("patient__clinic", "model").get(pk=pump.pk), NOW)

    assert chart.alarm_on == pump.alarm_on
    assert chart.predicted[-1].at.astimezone(chart.tz).date() == chart.alarm_on
