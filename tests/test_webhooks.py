"""The notifications app's HTTP faces: Twilio's status and inbound webhooks (signed),
the email unsubscribe page (RFC 8058 one-click) and /healthz.

Twilio's side is played by `twilio_fake.FakeTwilio`, which signs each webhook as Twilio
does; a sent SMS comes from `services.send_message` through the real Twilio transport to
that fake. Views read the wall clock, so times they record are checked against a window.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from xml.etree import ElementTree

import pytest
from django.core import signing
from django.test import Client
from django.utils import timezone
from factories import IMPLANTED_AT, CaregiverFactory, ClinicFactory, implanted_pump, screened_patient
from twilio_fake import FakeTwilio, SentSms, fake_twilio, sign

from notifications import services
from notifications.models import (
    BlockMethod,
    BlockReason,
    Channel,
    ContactBlock,
    Escalation,
    EscalationReason,
    EscalationStatus,
    Message,
    Status,
)

SITE_URL = "https://pumps.riverside.example.org"
STATUS_URL = f"{SITE_URL}/n/twilio/status/"
INBOUND_URL = f"{SITE_URL}/n/twilio/inbound/"
NOW = IMPLANTED_AT + timedelta(hours=1)  # the implant's safety warnings are due
PHONE, EMAIL = "+442071234567", "ann@example.org"
CLINIC_PHONE = "+442071838750"

twilio = pytest.fixture(fake_twilio)


@pytest.fixture
def twilio_settings(settings: Any, twilio: FakeTwilio) -> FakeTwilio:
    """Our app talks to the fake and checks webhook signatures with its auth token."""
    settings.SITE_URL = SITE_URL
    settings.PUMPTRACK_SMS_BACKEND = "notifications.transports.TwilioSmsBackend"
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = twilio.account_sid, twilio.auth_token
    settings.TWILIO_FROM_NUMBER, settings.TWILIO_API_BASE_URL = "+442071838700", twilio.base_url
    return twilio


@pytest.fixture
def patient(db: None) -> Any:
    clinic = ClinicFactory(name="Riverside Pump Clinic", phone=CLINIC_PHONE, notification_email="pumps@riverside.example.org")
    patient = screened_patient(clinic=clinic, given_name="Ann", email=EMAIL, phone=PHONE)
    services.replan_pumps([implanted_pump(patient=patient).pk], NOW)
    return patient


@pytest.fixture
def sent_sms(patient: Any, twilio_settings: FakeTwilio) -> tuple[Message, SentSms]:
    """An SMS our app handed to (the fake) Twilio: the row, and what Twilio received."""
    services.dispatch_due(NOW)
    row = Message.objects.filter(channel=Channel.SMS, status=Status.DUE).order_by("pk").first()
    assert row is not None
    assert services.send_message(row.pk, NOW).outcome == "sent"
    row.refresh_from_db()
    (sms,) = twilio_settings.messages
    assert (row.status, row.provider_id, sms.status_callback) == (Status.SENT, sms.sid, STATUS_URL)
    return row, sms


def post_inbound(client: Client, twilio: FakeTwilio, body: str, from_: str = PHONE) -> Any:
    return twilio.post_webhook(INBOUND_URL, twilio.inbound_params(from_, body), client=client)


def reply_of(response: Any) -> str:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/xml")
    root = ElementTree.fromstring(response.content)  # noqa: S314 - our own response
    assert root.tag == "Response"
    return "".join(m.text or "" for m in root.findall("Message"))


# ------------------------------------------------------------------------- status callback


def test_a_signed_delivered_callback_marks_the_sms_delivered(
    client: Client, sent_sms: tuple[Message, SentSms], twilio: FakeTwilio
) -> None:
    row, sms = sent_sms
    before = timezone.now()

    response = twilio.post_status(sms, "delivered", client=client)

    assert response.status_code == 204
    row.refresh_from_db()
    assert row.status == Status.DELIVERED
    assert row.delivered_at is not None and before <= row.delivered_at <= timezone.now()


# Ways to forge Twilio's signature for a POST of `params` to `url`.
BAD_SIGNATURES = {
    "missing": lambda fake, url, params: "",
    "signed with another auth token": lambda fake, url, params: sign("0" * 32, url, params),
    "signed for the other webhook": lambda fake, url, params: sign(
        fake.auth_token, STATUS_URL if url == INBOUND_URL else INBOUND_URL, params
    ),
    "signed for other values": lambda fake, url, params: sign(fake.auth_token, url, {**params, "To": "+442071234000"}),
}


def forged_post(client: Client, fake: FakeTwilio, url: str, params: dict[str, str], forgery: Any) -> Any:
    signature = forgery(fake, url, params)
    headers = {"HTTP_X_TWILIO_SIGNATURE": signature} if signature else {}
    return client.post(url.removeprefix(SITE_URL), params, **headers)


@pytest.mark.parametrize("forgery", BAD_SIGNATURES.values(), ids=BAD_SIGNATURES.keys())
def test_a_status_callback_without_a_valid_signature_is_refused_and_changes_nothing(
    client: Client, sent_sms: tuple[Message, SentSms], twilio: FakeTwilio, forgery: Any
) -> None:
    row, sms = sent_sms
    params = twilio.status_params(sms, "undelivered", error_code="30006")
    params_delivered = {**params, "MessageStatus": "delivered", "SmsStatus": "delivered"}

    for attempt in (params, params_delivered):
        assert forged_post(client, twilio, STATUS_URL, attempt, forgery).status_code == 403

    row.refresh_from_db()
    assert (row.status, row.delivered_at) == (Status.SENT, None)
    assert not ContactBlock.objects.exists()
    assert not Escalation.objects.filter(reason=EscalationReason.DELIVERY_FAILED).exists()


def test_a_status_callback_is_refused_when_no_auth_token_is_configured(
    client: Client, sent_sms: tuple[Message, SentSms], twilio: FakeTwilio, settings: Any
) -> None:
    row, sms = sent_sms
    settings.TWILIO_AUTH_TOKEN = ""  # nothing to check a signature against: nothing is trusted

    response = client.post(
        "/n/twilio/status/", twilio.status_params(sms, "delivered"), HTTP_X_TWILIO_SIGNATURE=sign("", STATUS_URL, {})
    )

    assert response.status_code == 403
    row.refresh_from_db()
    assert row.status == Status.SENT


def test_an_undelivered_sms_to_a_landline_fails_blocks_the_number_and_escalates(
    client: Client, sent_sms: tuple[Message, SentSms], twilio: FakeTwilio
) -> None:
    row, sms = sent_sms

    response = twilio.post_status(sms, "undelivered", client=client, error_code="30006")

    assert response.status_code == 204
    row.refresh_from_db()
    assert row.status == Status.FAILED_PERMANENTLY and "30006" in row.status_reason
    block = ContactBlock.objects.get(channel=Channel.SMS, address=PHONE, lifted_at=None)
    assert (block.reason, block.method) == (BlockReason.INVALID, BlockMethod.PROVIDER)
    assert Escalation.objects.filter(reason=EscalationReason.DELIVERY_FAILED, cycle=f"message:{row.pk}").exists()


# ------------------------------------------------------------------------- inbound SMS

STOP_WORDS = ["STOP", "QUIT", "END", "REVOKE", "OPT OUT", "CANCEL", "UNSUBSCRIBE", "STOPALL", "OPTOUT"]


@pytest.mark.parametrize("word", STOP_WORDS)
def test_an_inbound_stop_word_records_an_opt_out_and_tells_staff(
    client: Client, patient: Any, twilio_settings: FakeTwilio, word: str
) -> None:
    before = timezone.now()

    reply = reply_of(post_inbound(client, twilio_settings, word))

    block = ContactBlock.objects.get(channel=Channel.SMS, address=PHONE, lifted_at=None)
    assert (block.reason, block.method, block.keyword) == (BlockReason.OPTED_OUT, BlockMethod.SMS_KEYWORD, word)
    assert before <= block.created_at <= timezone.now()
    escalation = Escalation.objects.get(patient=patient, reason=EscalationReason.OPTED_OUT, cycle=f"block:{block.pk}")
    assert escalation.status == EscalationStatus.OPEN and f"'{word}'" in escalation.detail
    assert "no more texts" in reply and "START" in reply


@pytest.mark.parametrize("body", ["stop", "  Stop\n", "opt   out"])
def test_stop_words_are_recognised_in_any_case_and_spacing(
    client: Client, patient: Any, twilio_settings: FakeTwilio, body: str
) -> None:
    reply_of(post_inbound(client, twilio_settings, body))

    assert ContactBlock.objects.filter(channel=Channel.SMS, address=PHONE, method=BlockMethod.SMS_KEYWORD).exists()


def test_a_caregiver_texting_stop_opts_out_their_number_and_escalates_for_the_patient(
    client: Client, patient: Any, twilio_settings: FakeTwilio
) -> None:
    CaregiverFactory(patient=patient, phone="+442071234599")

    reply_of(post_inbound(client, twilio_settings, "STOP", from_="+442071234599"))

    block = ContactBlock.objects.get(address="+442071234599", lifted_at=None)
    assert Escalation.objects.filter(patient=patient, reason=EscalationReason.OPTED_OUT, cycle=f"block:{block.pk}").exists()
    assert not ContactBlock.objects.filter(address=PHONE).exists()  # the patient's own number still works


def test_start_lifts_the_opt_out_and_keeps_it_as_history(client: Client, patient: Any, twilio_settings: FakeTwilio) -> None:
    reply_of(post_inbound(client, twilio_settings, "STOP"))
    before = timezone.now()

    reply = reply_of(post_inbound(client, twilio_settings, "START"))

    (block,) = ContactBlock.objects.filter(channel=Channel.SMS, address=PHONE)
    assert block.lifted_at is not None and before <= block.lifted_at <= timezone.now()
    assert block.lifted_method == BlockMethod.SMS_KEYWORD
    assert "back on" in reply
    # A new STOP after START is recorded again, as a new opt-out.
    reply_of(post_inbound(client, twilio_settings, "STOP"))
    assert ContactBlock.objects.filter(channel=Channel.SMS, address=PHONE).count() == 2


def test_help_replies_with_the_clinics_phone_and_changes_nothing(
    client: Client, patient: Any, twilio_settings: FakeTwilio
) -> None:
    reply = reply_of(post_inbound(client, twilio_settings, "HELP"))

    assert CLINIC_PHONE in reply and "Riverside Pump Clinic" in reply and "STOP" in reply
    assert not ContactBlock.objects.exists()


def test_any_other_inbound_text_gets_no_reply(client: Client, patient: Any, twilio_settings: FakeTwilio) -> None:
    assert reply_of(post_inbound(client, twilio_settings, "Stopping by on Tuesday")) == ""
    assert not ContactBlock.objects.exists()


@pytest.mark.parametrize("forgery", BAD_SIGNATURES.values(), ids=BAD_SIGNATURES.keys())
def test_an_unsigned_inbound_stop_is_refused(client: Client, patient: Any, twilio_settings: FakeTwilio, forgery: Any) -> None:
    params = twilio_settings.inbound_params(PHONE, "STOP")

    response = forged_post(client, twilio_settings, INBOUND_URL, params, forgery)

    assert response.status_code == 403
    assert not ContactBlock.objects.exists() and not Escalation.objects.filter(reason=EscalationReason.OPTED_OUT).exists()


# ------------------------------------------------------------------------- unsubscribe link


def unsubscribe_path(address: str = EMAIL) -> str:
    return services.unsubscribe_url(Channel.EMAIL, address).removeprefix(SITE_URL)


@pytest.fixture
def csrf_client() -> Client:
    """A client that enforces CSRF like a real browser session would."""
    return Client(enforce_csrf_checks=True)


def test_opening_the_unsubscribe_link_asks_to_confirm_and_unsubscribes_nobody(
    csrf_client: Client, patient: Any, settings: Any
) -> None:
    settings.SITE_URL = SITE_URL

    response = csrf_client.get(unsubscribe_path())

    page = response.content.decode()
    assert response.status_code == 200
    assert f"Stop emails to {EMAIL}?" in page and '<form method="post">' in page
    assert not ContactBlock.objects.exists() and not Escalation.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"List-Unsubscribe": "One-Click"},  # RFC 8058: the mail provider's one-click POST
        {},  # the confirmation page's button
    ],
    ids=["one-click", "confirm-button"],
)
def test_posting_the_unsubscribe_link_records_the_opt_out_and_tells_staff(
    csrf_client: Client, patient: Any, settings: Any, body: dict[str, str]
) -> None:
    settings.SITE_URL = SITE_URL
    before = timezone.now()

    response = csrf_client.post(unsubscribe_path(), body)  # no CSRF token: mail providers have none

    assert response.status_code == 200 and "You will get no more emails" in response.content.decode()
    block = ContactBlock.objects.get(channel=Channel.EMAIL, address=EMAIL, lifted_at=None)
    assert (block.reason, block.method) == (BlockReason.OPTED_OUT, BlockMethod.UNSUBSCRIBE_LINK)
    assert before <= block.created_at <= timezone.now()
    escalation = Escalation.objects.get(patient=patient, reason=EscalationReason.OPTED_OUT, cycle=f"block:{block.pk}")
    assert escalation.status == EscalationStatus.OPEN
    assert not ContactBlock.objects.filter(channel=Channel.SMS).exists()  # texts still reach her


def test_unsubscribing_twice_records_one_opt_out(csrf_client: Client, patient: Any, settings: Any) -> None:
    settings.SITE_URL = SITE_URL

    for _ in range(2):
        assert csrf_client.post(unsubscribe_path(), {"List-Unsubscribe": "One-Click"}).status_code == 200

    assert ContactBlock.objects.filter(channel=Channel.EMAIL, address=EMAIL).count() == 1
    assert Escalation.objects.filter(reason=EscalationReason.OPTED_OUT).count() == 1


FORGED_TOKENS = {
    "garbage": lambda: "not-a-token",
    "tampered signature": lambda: services.unsubscribe_token(Channel.EMAIL, EMAIL)[:-4] + "AAAA",
    "signed for another purpose": lambda: signing.dumps({"c": "email", "a": EMAIL}, compress=True),
}


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("token", FORGED_TOKENS.values(), ids=FORGED_TOKENS.keys())
def test_a_forged_unsubscribe_link_shows_a_readable_error_and_unsubscribes_nobody(
    csrf_client: Client, patient: Any, token: Any, method: str
) -> None:
    response = getattr(csrf_client, method)(f"/n/unsubscribe/{token()}/")

    assert response.status_code == 400
    page = response.content.decode()
    assert "This link is not valid" in page and "call your clinic" in page
    assert not ContactBlock.objects.exists() and not Escalation.objects.exists()


# ------------------------------------------------------------------------- /healthz


@pytest.mark.django_db
def test_healthz_is_unhealthy_and_names_the_sweeps_before_any_heartbeat(client: Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 503
    body = json.loads(response.content)
    assert body["ok"] is False
    assert any("plan" in p for p in body["problems"]) and any("dispatch" in p for p in body["problems"])


@pytest.mark.django_db
def test_healthz_is_healthy_after_both_sweeps_beat(client: Client) -> None:
    services.beat("plan", timezone.now())
    services.beat("dispatch", timezone.now())

    response = client.get("/healthz")

    assert response.status_code == 200 and json.loads(response.content) == {"ok": True, "problems": []}


@pytest.mark.django_db
def test_healthz_names_only_the_sweep_that_stopped(client: Client) -> None:
    services.beat("plan", timezone.now())
    services.beat("dispatch", timezone.now() - timedelta(minutes=3))  # runs every minute: 2 missed

    response = client.get("/healthz")

    assert response.status_code == 503
    (problem,) = json.loads(response.content)["problems"]
    assert problem.startswith("dispatch sweep")
