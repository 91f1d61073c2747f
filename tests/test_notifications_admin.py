"""What staff and operators see of the reminders: the outbox, escalations and contact blocks
in the admin, the banner when a sweep stops, `manage.py run_reminders`, and re-planning
after a patient's or a clinic's details change in the admin.

The clock is frozen at NOW, 2027-02-01 12:00 UTC (admin_support.py). The worked-example pump
(implanted 2027-01-04) must be refilled by 2027-02-03, so at NOW the reminder of two days
before (10:00 today) is due and the one of the day itself (2027-02-03 10:00) is planned.
Clinics are in UTC. Messages are planned with the real services, as the sweeps do.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, time, timedelta
from io import StringIO
from typing import Any

import pytest
from admin_support import NOW, as_shown, client_for, listed, staff
from django.core import mail
from django.core.management import CommandError, call_command
from django.urls import reverse
from factories import UserFactory, implanted_pump, screened_patient

from notifications import services
from notifications.models import (
    BlockMethod,
    ContactBlock,
    Escalation,
    EscalationReason,
    EscalationStatus,
    Message,
    Severity,
    Status,
)
from patients.models import Clinic, Patient, Role
from pumps.models import Pump

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]

EMAIL, PHONE = "alex@example.org", "+442071234567"
MESSAGES = reverse("admin:notifications_message_changelist")
ESCALATIONS = reverse("admin:notifications_escalation_changelist")
BLOCKS = reverse("admin:notifications_contactblock_changelist")


# ----------------------------------------------------------------------------- helpers


def reachable_pump(clinic: Clinic, **patient: Any) -> Pump:
    """The worked-example pump of a patient with an email address and a phone, planned at NOW."""
    pump = implanted_pump(patient=screened_patient(clinic=clinic, email=EMAIL, phone=PHONE, **patient))
    services.replan_pumps([pump.pk], NOW)
    return pump


def due_reminder(pump: Pump, channel: str = "email") -> Message:
    return Message.objects.get(pump=pump, kind="refill_reminder", stage="d0", channel=channel)


def escalate(pump: Pump, reason: EscalationReason, severity: str, raised_at: datetime) -> Escalation:
    esc, _ = services.raise_escalation(
        clinic=pump.patient.clinic,
        pump=pump,
        reason=reason,
        severity=severity,
        cycle=f"test:{raised_at.isoformat()}",
        detail=f"{reason.label} (test)",
        now=raised_at,
    )
    return esc


def action(client: Any, url: str, name: str, objects: list[Any], **fields: str) -> Any:
    return client.post(url, {"action": name, "_selected_action": [o.pk for o in objects], **fields})


@pytest.fixture
def fresh_sweeps() -> None:
    """Both sweeps finished a moment ago: no banner."""
    services.beat("plan", NOW - timedelta(minutes=5))
    services.beat("dispatch", NOW - timedelta(seconds=30))


# ----------------------------------------------------------------------------- pages and scoping

ROLES: dict[str, Callable[[Clinic], Any]] = {
    "superuser": lambda clinic: UserFactory(is_staff=True, is_superuser=True),
    "nurse": lambda clinic: staff((clinic, Role.NURSE)),
    "coordinator": lambda clinic: staff((clinic, Role.COORDINATOR)),
    "viewer": lambda clinic: staff((clinic, Role.VIEWER)),
}


@pytest.mark.parametrize("role", ROLES)
def test_it_shows_messages_escalations_and_blocks_to_every_role(role: str, clinic_a: Clinic) -> None:
    pump = reachable_pump(clinic_a)
    esc = escalate(pump, EscalationReason.OVERDUE, Severity.WARNING, NOW)
    services.block_contact("sms", PHONE, reason="opted_out", method=BlockMethod.SMS_KEYWORD, keyword="STOP", now=NOW)
    client = client_for(ROLES[role](clinic_a))

    assert due_reminder(pump).pk in listed(client.get(MESSAGES))
    assert esc.pk in listed(client.get(ESCALATIONS))
    assert listed(client.get(BLOCKS)) == {ContactBlock.objects.get().pk}
    message_page = client.get(reverse("admin:notifications_message_change", args=[due_reminder(pump).pk]))
    assert message_page.status_code == 200
    assert "If sent now it would read" in message_page.content.decode()
    assert client.get(reverse("admin:notifications_escalation_change", args=[esc.pk])).status_code == 200
    assert client.get(reverse("admin:notifications_contactblock_change", args=[ContactBlock.objects.get().pk])).status_code == 200


def test_it_shows_the_text_as_sent_and_each_attempt(clinic_a: Clinic) -> None:
    pump = reachable_pump(clinic_a)
    message = Message.objects.get(pump=pump, stage="d2", channel="email")
    services.dispatch_due(NOW)
    assert services.send_message(message.pk, NOW, worker="worker-1").outcome == "sent"

    page = client_for(staff((clinic_a, Role.VIEWER))).get(reverse("admin:notifications_message_change", args=[message.pk]))

    html = page.content.decode()
    message.refresh_from_db()
    assert "As sent:" in html and message.rendered_body.splitlines()[0] in html
    assert "worker-1" in html  # the attempt


@pytest.mark.parametrize("changelist", [MESSAGES, ESCALATIONS, BLOCKS])
def test_it_lists_only_own_clinic_rows_and_all_to_a_superuser(changelist: str, clinic_a: Clinic, clinic_b: Clinic) -> None:
    mine = reachable_pump(clinic_a, family_name="Mine")
    theirs = reachable_pump(clinic_b, family_name="Theirs")
    # Clinic B's patient has her own phone: only that block belongs to clinic B.
    Patient.objects.filter(pk=theirs.patient.pk).update(phone="+442079460000")
    rows = {
        MESSAGES: lambda p: set(Message.objects.filter(pump=p).values_list("pk", flat=True)),
        ESCALATIONS: lambda p: {escalate(p, EscalationReason.OVERDUE, Severity.WARNING, NOW).pk},
        BLOCKS: lambda p: {
            services.block_contact("sms", str(Patient.objects.get(pk=p.patient.pk).phone), reason="invalid",
                                   method=BlockMethod.PROVIDER, now=NOW).pk  # type: ignore[union-attr]
        },
    }[changelist]  # fmt: skip
    own, other = rows(mine), rows(theirs)

    assert listed(client_for(staff((clinic_a, Role.NURSE))).get(changelist)) & (own | other) == own
    assert listed(client_for(UserFactory(is_staff=True, is_superuser=True)).get(changelist)) >= own | other


@pytest.mark.parametrize("model", ["message", "escalation", "contactblock"])
def test_it_does_not_open_another_clinics_row(model: str, clinic_a: Clinic, clinic_b: Clinic) -> None:
    theirs = reachable_pump(clinic_b)
    obj = {
        "message": lambda: due_reminder(theirs),
        "escalation": lambda: escalate(theirs, EscalationReason.OVERDUE, Severity.WARNING, NOW),
        "contactblock": lambda: services.block_contact("sms", PHONE, reason="invalid", method=BlockMethod.PROVIDER, now=NOW),
    }[model]()

    response = client_for(staff((clinic_a, Role.NURSE))).get(
        reverse(f"admin:notifications_{model}_change", args=[obj.pk]), follow=True
    )

    assert response.redirect_chain == [(reverse("admin:index"), 302)]
    assert "doesn’t exist" in response.content.decode()


def test_it_lets_no_one_edit_or_delete_a_message(clinic_a: Clinic) -> None:
    message = due_reminder(reachable_pump(clinic_a))
    client = client_for(UserFactory(is_staff=True, is_superuser=True))
    url = reverse("admin:notifications_message_change", args=[message.pk])

    assert client.post(url, {"address": "someone@else.example"}).status_code == 403
    assert client.post(reverse("admin:notifications_message_delete", args=[message.pk]), {"post": "yes"}).status_code == 403
    message.refresh_from_db()
    assert message.address == EMAIL


# ----------------------------------------------------------------------------- escalations


def test_it_lists_open_escalations_first_then_by_severity_newest_first(clinic_a: Clinic) -> None:
    pump = reachable_pump(clinic_a)
    at = NOW - timedelta(days=3)
    info = escalate(pump, EscalationReason.BATTERY_PLANNING, Severity.INFO, at + timedelta(hours=5))
    old_critical = escalate(pump, EscalationReason.ALARM_DATE_REACHED, Severity.CRITICAL, at)
    warning = escalate(pump, EscalationReason.OVERDUE, Severity.WARNING, at + timedelta(hours=4))
    new_critical = escalate(pump, EscalationReason.POST_MRI_CHECK_MISSING, Severity.CRITICAL, at + timedelta(hours=2))
    handled = escalate(pump, EscalationReason.MRI_UNSAFE, Severity.CRITICAL, at + timedelta(hours=6))
    acknowledged = escalate(pump, EscalationReason.OPTED_OUT, Severity.WARNING, at + timedelta(hours=1))
    services.resolve_escalation(handled, by=None, now=NOW, resolution="Done.")
    services.acknowledge_escalation(acknowledged, by=None, now=NOW)

    response = client_for(staff((clinic_a, Role.NURSE))).get(ESCALATIONS)

    order = [e.pk for e in response.context["cl"].result_list]
    assert order == [new_critical.pk, old_critical.pk, warning.pk, info.pk, acknowledged.pk, handled.pk]


def test_it_acknowledges_selected_escalations(clinic_a: Clinic) -> None:
    esc = escalate(reachable_pump(clinic_a), EscalationReason.OVERDUE, Severity.WARNING, NOW)
    nurse = staff((clinic_a, Role.NURSE))

    action(client_for(nurse), ESCALATIONS, "acknowledge", [esc])

    esc.refresh_from_db()
    assert (esc.status, esc.acknowledged_by, esc.acknowledged_at) == (EscalationStatus.ACKNOWLEDGED, nurse, NOW)


def test_it_resolves_selected_escalations_only_with_a_note(clinic_a: Clinic) -> None:
    esc = escalate(reachable_pump(clinic_a), EscalationReason.OVERDUE, Severity.WARNING, NOW)
    nurse = staff((clinic_a, Role.NURSE))
    client = client_for(nurse)

    page = action(client, ESCALATIONS, "resolve", [esc])
    assert page.status_code == 200 and "What was done" in page.content.decode()
    action(client, ESCALATIONS, "resolve", [esc], apply="yes", resolution="")
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN

    action(client, ESCALATIONS, "resolve", [esc], apply="yes", resolution="Refill booked for tomorrow 09:00.")

    esc.refresh_from_db()
    assert (esc.status, esc.resolved_by, esc.resolved_at) == (EscalationStatus.RESOLVED, nurse, NOW)
    assert esc.resolution == "Refill booked for tomorrow 09:00."


def test_it_resolves_on_the_escalation_page_with_the_note_typed_there(clinic_a: Clinic) -> None:
    esc = escalate(reachable_pump(clinic_a), EscalationReason.OVERDUE, Severity.WARNING, NOW)
    client = client_for(staff((clinic_a, Role.COORDINATOR)))
    url = reverse("admin:notifications_escalation_change", args=[esc.pk])
    assert 'name="_resolve"' in client.get(url).content.decode()

    without_note = client.post(url, {"resolution": " ", "_resolve": "Resolve"})
    assert without_note.status_code == 200 and "Say what was done" in without_note.content.decode()
    client.post(url, {"resolution": "", "_acknowledge": "Acknowledge"})
    esc.refresh_from_db()
    assert esc.status == EscalationStatus.ACKNOWLEDGED

    client.post(url, {"resolution": "Phoned the patient; refill tomorrow.", "_resolve": "Resolve"})

    esc.refresh_from_db()
    assert (esc.status, esc.resolution) == (EscalationStatus.RESOLVED, "Phoned the patient; refill tomorrow.")


def test_it_lets_a_viewer_read_but_not_handle_escalations(clinic_a: Clinic) -> None:
    esc = escalate(reachable_pump(clinic_a), EscalationReason.OVERDUE, Severity.WARNING, NOW)
    client = client_for(staff((clinic_a, Role.VIEWER)))

    assert 'value="acknowledge"' not in client.get(ESCALATIONS).content.decode()
    assert 'value="acknowledge"' in client_for(staff((clinic_a, Role.NURSE))).get(ESCALATIONS).content.decode()
    action(client, ESCALATIONS, "acknowledge", [esc])
    assert client.post(reverse("admin:notifications_escalation_change", args=[esc.pk]), {"_acknowledge": "1"}).status_code == 403

    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN


def test_it_handles_no_escalation_of_a_clinic_where_the_user_only_views(clinic_a: Clinic, clinic_b: Clinic) -> None:
    esc = escalate(reachable_pump(clinic_b), EscalationReason.OVERDUE, Severity.WARNING, NOW)
    user = staff((clinic_a, Role.NURSE), (clinic_b, Role.VIEWER))

    action(client_for(user), ESCALATIONS, "acknowledge", [esc])

    esc.refresh_from_db()
    assert esc.status == EscalationStatus.OPEN


# ----------------------------------------------------------------------------- contact blocks


def test_it_lifts_a_block_only_after_confirmation_and_replans_its_messages(
    clinic_a: Clinic, django_capture_on_commit_callbacks: Any
) -> None:
    pump = reachable_pump(clinic_a)
    with django_capture_on_commit_callbacks(execute=True):
        services.handle_inbound_sms(PHONE, "STOP", NOW)
    assert due_reminder(pump, "sms").status == Status.SUPPRESSED
    block = ContactBlock.objects.get(address=PHONE)
    client = client_for(staff((clinic_a, Role.COORDINATOR)))

    page = action(client, BLOCKS, "lift", [block])
    assert page.status_code == 200 and "I have confirmed" in page.content.decode()
    action(client, BLOCKS, "lift", [block], apply="yes")  # the box not ticked
    block.refresh_from_db()
    assert block.lifted_at is None

    with django_capture_on_commit_callbacks(execute=True):
        action(client, BLOCKS, "lift", [block], apply="yes", confirmed="on")

    block.refresh_from_db()
    assert (block.lifted_at, block.lifted_method) == (NOW, BlockMethod.STAFF)
    assert due_reminder(pump, "sms").status == Status.PLANNED


def test_it_lets_no_viewer_lift_a_block(clinic_a: Clinic) -> None:
    reachable_pump(clinic_a)
    block = services.block_contact("sms", PHONE, reason="opted_out", method=BlockMethod.SMS_KEYWORD, now=NOW)
    assert block is not None

    action(client_for(staff((clinic_a, Role.VIEWER))), BLOCKS, "lift", [block], apply="yes", confirmed="on")

    block.refresh_from_db()
    assert block.lifted_at is None


def test_it_lifts_no_block_of_a_clinic_where_the_user_only_views(clinic_a: Clinic, clinic_b: Clinic) -> None:
    reachable_pump(clinic_b)
    block = services.block_contact("sms", PHONE, reason="opted_out", method=BlockMethod.SMS_KEYWORD, now=NOW)
    assert block is not None
    user = staff((clinic_a, Role.COORDINATOR), (clinic_b, Role.VIEWER))

    action(client_for(user), BLOCKS, "lift", [block], apply="yes", confirmed="on")

    block.refresh_from_db()
    assert block.lifted_at is None


def test_it_names_the_patient_behind_a_blocked_address(clinic_a: Clinic) -> None:
    pump = reachable_pump(clinic_a)
    services.block_contact("email", EMAIL, reason="bounced", method=BlockMethod.PROVIDER, now=NOW)

    html = client_for(staff((clinic_a, Role.NURSE))).get(BLOCKS).content.decode()

    assert reverse("admin:patients_patient_change", args=[pump.patient.pk]) in html


# ----------------------------------------------------------------------------- the pump page


def test_it_shows_the_pumps_messages_and_open_escalations_on_its_page(clinic_a: Clinic) -> None:
    pump = reachable_pump(clinic_a)
    esc = escalate(pump, EscalationReason.ALARM_DATE_REACHED, Severity.CRITICAL, NOW)

    html = client_for(staff((clinic_a, Role.VIEWER))).get(reverse("admin:pumps_pump_change", args=[pump.pk])).content.decode()

    assert reverse("admin:notifications_message_change", args=[due_reminder(pump).pk]) in html
    assert reverse("admin:notifications_escalation_change", args=[esc.pk]) in html


# ----------------------------------------------------------------------------- heartbeat banner


def banner(client: Any, url: str = reverse("admin:index")) -> str:
    html = client.get(url).content.decode()
    start = html.find('id="pt-sweep-banner"')
    return "" if start < 0 else html[start : html.find("</div>", start)]


def test_it_shows_a_red_banner_on_every_admin_page_when_no_sweep_has_run(clinic_a: Clinic) -> None:
    client = client_for(staff((clinic_a, Role.VIEWER)))
    for url in (reverse("admin:index"), MESSAGES, reverse("admin:pumps_pump_changelist")):
        text = banner(client, url)
        assert "Reminders and staff escalations are not being planned: plan sweep has never run" in text
        assert "dispatch sweep has never run" in text


def test_it_shows_no_banner_while_the_sweeps_are_fresh(clinic_a: Clinic, fresh_sweeps: None) -> None:
    assert banner(client_for(staff((clinic_a, Role.VIEWER)))) == ""


def test_it_names_the_sweep_that_stopped(clinic_a: Clinic, fresh_sweeps: None) -> None:
    services.beat("dispatch", NOW - timedelta(minutes=3))  # twice its interval is 2 minutes

    text = banner(client_for(staff((clinic_a, Role.VIEWER))))

    assert "Due reminders and escalation emails are not being sent: dispatch sweep last finished" in text
    assert "plan sweep" not in text


def test_it_shows_no_banner_on_the_login_page() -> None:
    from django.test import Client

    assert banner(Client(), reverse("admin:login")) == ""


# ----------------------------------------------------------------------------- run_reminders


def run_reminders(*args: str) -> str:
    out = StringIO()
    call_command("run_reminders", *args, stdout=out)
    return out.getvalue()


def test_run_reminders_sends_what_is_due_at_the_moment_given(clinic_a: Clinic, capsys: Any) -> None:
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a, email=EMAIL, phone=PHONE))

    output = run_reminders("--as-of", "2027-02-01T12:00:00+00:00")

    assert [m.to for m in mail.outbox] == [[EMAIL]]
    assert "3 February 2027" in mail.outbox[0].body  # the refill-by date, two days ahead
    assert f"SMS to {PHONE}" in capsys.readouterr().out  # the console SMS backend
    assert Message.objects.get(pump=pump, stage="d2", channel="email").status == Status.SENT
    assert Message.objects.get(pump=pump, stage="d0", channel="email").status == Status.PLANNED
    assert "2 sent" in output
    assert services.stale_sweeps(NOW) == []  # both heartbeats recorded


def test_run_reminders_sends_nothing_twice(clinic_a: Clinic) -> None:
    implanted_pump(patient=screened_patient(clinic=clinic_a, email=EMAIL))
    run_reminders("--as-of", "2027-02-01T12:00Z")

    output = run_reminders("--as-of", "2027-02-01T12:05Z")

    assert len(mail.outbox) == 1
    assert "0 sent" in output


def test_run_reminders_raises_escalations_and_emails_the_clinic(clinic_a: Clinic) -> None:
    Clinic.objects.filter(pk=clinic_a.pk).update(notification_email="itb@clinic.example.org")
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a, email=EMAIL))

    # The alarm date of the worked example is 2027-04-09: critical from its first minute.
    output = run_reminders("--as-of", "2027-04-09T00:30:00+00:00")

    assert Escalation.objects.filter(pump=pump, reason=EscalationReason.ALARM_DATE_REACHED, severity=Severity.CRITICAL).exists()
    assert any(m.to == ["itb@clinic.example.org"] and "[CRITICAL]" in m.subject for m in mail.outbox)
    assert "critical)" in output


def test_run_reminders_reads_a_time_without_offset_as_utc(clinic_a: Clinic) -> None:
    implanted_pump(patient=screened_patient(clinic=clinic_a, email=EMAIL))

    output = run_reminders("--as-of", "2027-02-01 12:00")

    assert "as of 2027-02-01T12:00:00+00:00" in output
    assert len(mail.outbox) == 1


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_run_reminders_shows_progress_only_on_a_terminal(clinic_a: Clinic) -> None:
    implanted_pump(patient=screened_patient(clinic=clinic_a, email=EMAIL))
    terminal = Terminal()
    call_command("run_reminders", "--as-of", "2027-02-01T12:00Z", stdout=terminal)

    piped = run_reminders("--as-of", "2027-02-01T12:05Z")

    assert "\rplanning pumps: |" in terminal.getvalue() and "100%  1/1" in terminal.getvalue()
    assert "\r" not in piped and "planning" not in piped


@pytest.mark.parametrize("value", ["tomorrow", "2027-13-01T10:00", "2027-02-01T25:00", ""])
def test_run_reminders_refuses_a_bad_moment_naming_the_option(value: str) -> None:
    with pytest.raises(CommandError, match="--as-of"):
        run_reminders("--as-of", value)


# ----------------------------------------------------------------------------- re-planning after admin edits


def test_removing_a_patients_email_in_the_admin_cancels_the_emails_at_once(
    clinic_a: Clinic, django_capture_on_commit_callbacks: Any
) -> None:
    pump = reachable_pump(clinic_a)
    client = client_for(staff((clinic_a, Role.COORDINATOR)))
    url = reverse("admin:patients_patient_change", args=[pump.patient.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, as_shown(client.get(url), email=""))

    assert response.status_code == 302
    assert due_reminder(pump, "email").status == Status.CANCELLED
    assert due_reminder(pump, "sms").status == Status.PLANNED


def test_adding_a_caregiver_in_the_admin_plans_their_reminders_at_once(
    clinic_a: Clinic, django_capture_on_commit_callbacks: Any
) -> None:
    # High risk (injury at T6 or above): caregivers get the refill reminders too (R12).
    pump = reachable_pump(clinic_a, sci_t6_or_above=True)
    client = client_for(staff((clinic_a, Role.NURSE)))
    url = reverse("admin:patients_patient_change", args=[pump.patient.pk])
    data = as_shown(client.get(url), **{"caregivers-TOTAL_FORMS": "1"})
    data.update({"caregivers-0-id": "", "caregivers-0-patient": "", "caregivers-0-name": "Robin"})
    data.update({"caregivers-0-phone": "+442071234568", "caregivers-0-language": "en"})
    data["caregivers-0-receives_safety_messages"] = "on"

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, data)

    assert response.status_code == 302
    robin = Message.objects.get(pump=pump, caregiver__name="Robin", stage="d0")
    assert (robin.address, robin.status) == ("+442071234568", Status.PLANNED)


def test_changing_the_clinics_reminder_time_replans_its_pumps(clinic_a: Clinic, django_capture_on_commit_callbacks: Any) -> None:
    pump = reachable_pump(clinic_a)
    assert due_reminder(pump).due_at.time() == time(10, 0)
    client = client_for(staff((clinic_a, Role.CLINICIAN)))
    url = reverse("admin:patients_clinic_change", args=[clinic_a.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, as_shown(client.get(url), reminder_time="14:30:00"))

    assert response.status_code == 302
    assert due_reminder(pump).due_at.time() == time(14, 30)
    assert "reminder_time" in client.get(url).content.decode()  # the Messages fieldset shows it
