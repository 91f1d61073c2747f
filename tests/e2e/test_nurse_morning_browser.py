"""A nurse's morning in the browser, on the demo data (issue 5's acceptance walk).

Log in, see the worklist, book an appointment for a pump due soon, record a refill for an
overdue one and watch it leave the list, open a pump page whose charts render, and
download the patient's emergency card and read its text. Screenshots are saved as test
artifacts (`test-results/playwright/...`).
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from playwright.sync_api import Page, expect
from pypdf import PdfReader

from pumps.models import Appointment, AppointmentStatus, Pump, Refill

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

PASSWORD = "Morning-nurse-2026"


def test_a_nurses_morning(live_server: Any, page: Page, output_path: str) -> None:
    shots = Path(output_path)
    shots.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    call_command("seed_demo", password=PASSWORD, stdout=io.StringIO())

    # 1. Log in: members land on the worklist.
    page.goto(f"{live_server.url}/")
    page.fill("#id_username", "nurse")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server.url}/work/")
    overdue = page.locator("[data-group=overdue]").first
    expect(overdue).to_be_visible()
    shot("01-worklist")

    # 2. Book the next visit of a pump due soon and without one.
    due = page.locator("[data-group=due_unbooked] tr[data-pump]").first
    due_pump = Pump.objects.get(pk=int(due.get_attribute("data-pump") or 0))
    due.get_by_role("link", name="Book appointment").click()
    expect(page.locator("h1")).to_contain_text("appointment")
    tz = due_pump.patient.clinic.tz
    visit = (timezone.now() + timedelta(days=1)).astimezone(tz)
    if due_pump.refill_by is not None and visit.date() > due_pump.refill_by:
        visit = visit.replace(year=due_pump.refill_by.year, month=due_pump.refill_by.month, day=due_pump.refill_by.day)
    page.fill("#id_starts_at_0", visit.strftime("%Y-%m-%d"))
    page.fill("#id_starts_at_1", "10:30:00")
    page.fill("#id_location", "Neuro day unit, room 3")
    shot("02-book-appointment")
    page.locator("input[name=_save]").click()
    expect(page.locator(".messagelist")).to_contain_text("added successfully")
    assert Appointment.objects.filter(pump=due_pump, status=AppointmentStatus.BOOKED).exists()
    page.goto(f"{live_server.url}/work/")
    expect(page.locator(f"[data-group=due_unbooked] tr[data-pump='{due_pump.pk}']")).to_have_count(0)
    shot("03-worklist-after-booking")

    # 3. Record a refill for an overdue pump; it leaves the overdue group.
    row = page.locator("[data-group=overdue] tr[data-pump]").first
    overdue_pump = Pump.objects.select_related("patient__clinic").get(pk=int(row.get_attribute("data-pump") or 0))
    row.get_by_role("link", name="Record refill").click()
    expect(page.locator("h1")).to_contain_text("Add refill")
    at = (timezone.now() - timedelta(minutes=5)).astimezone(overdue_pump.patient.clinic.tz)
    page.fill("#id_performed_at_0", at.strftime("%Y-%m-%d"))
    page.fill("#id_performed_at_1", at.strftime("%H:%M:%S"))
    page.fill("#id_withdrawn_ml", "2.00")
    page.locator("input[name=_save]").click()
    expect(page.locator(".pt-confirm")).to_be_visible()  # the computed result first
    shot("04-refill-preview")
    page.locator("input[name=_save]").click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    assert Refill.objects.filter(pump=overdue_pump, is_initial_fill=False, performed_by__username="nurse").exists()
    page.goto(f"{live_server.url}/work/")
    for group in ("overdue", "alarm_reached"):
        expect(page.locator(f"[data-group={group}] tr[data-pump='{overdue_pump.pk}']")).to_have_count(0)
    shot("05-worklist-after-refill")

    # 4. The pump page's charts render (inline SVG, with a table alternative).
    page.goto(f"{live_server.url}/admin/pumps/pump/{overdue_pump.pk}/change/")
    charts = page.locator("svg.pt-chart")
    expect(charts).to_have_count(2)
    expect(charts.first).to_be_visible()
    assert charts.first.bounding_box()["height"] > 100  # type: ignore[index]
    expect(page.locator("svg.pt-chart title").first).not_to_be_empty()
    charts.first.scroll_into_view_if_needed()
    shot("06-pump-page")
    charts.first.screenshot(path=str(shots / "07-reservoir-chart.png"))
    charts.nth(1).screenshot(path=str(shots / "08-dose-chart.png"))

    # 5. The emergency card downloads as a PDF with the pump, the dose and what to do.
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Emergency card (PDF)").click()
    card = download_info.value
    path = shots / card.suggested_filename
    card.save_as(path)
    text = " ".join(p.extract_text() for p in PdfReader(path).pages)
    overdue_pump.refresh_from_db()
    assert overdue_pump.serial_number in text
    assert "baclofen" in text.lower()
    assert "withdrawal" in text.lower() or "abstinencia" in text.lower()
    assert path.stat().st_size > 1000
