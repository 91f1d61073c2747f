"""Two-factor authentication for staff (issue 6): enrolment, the code step after the password,
backup codes, removal, PUMPTRACK_REQUIRE_2FA, the API's password endpoint and the admin reset.

Codes are real: computed from the device's key with django-otp's RFC 6238 arithmetic at the
(travelled) clock, as an authenticator app would.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from admin_support import staff
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from api.models import ApiToken
from patients.models import Clinic, Role

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"
START = datetime(2027, 2, 1, 9, 0, 0, tzinfo=UTC)


class Clock:
    """The wall clock, moved by hand: TOTP codes and django-otp's throttle both read it."""

    def __init__(self, traveller: Any) -> None:
        self.traveller = traveller

    def step(self, seconds: float = 31) -> None:
        """On to the next 30-second window (a code is accepted once; throttles expire)."""
        self.traveller.shift(timedelta(seconds=seconds))


@pytest.fixture
def clock() -> Iterator[Clock]:
    with time_machine.travel(START, tick=False) as traveller:
        yield Clock(traveller)


@pytest.fixture
def nurse(clinic_a: Clinic) -> Any:
    user = staff((clinic_a, Role.NURSE))
    user.set_password(PASSWORD)
    user.save()
    return user


def code_for(device: TOTPDevice) -> str:
    """What the authenticator app shows now."""
    device.refresh_from_db()
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):06d}"


def password_login(client: Client, username: str, next_url: str = "/admin/") -> Any:
    return client.post(f"/admin/login/?next={next_url}", {"username": username, "password": PASSWORD, "next": next_url})


def enrol(client: Client, user: Any) -> TOTPDevice:
    """Through the pages, as a person would: open the enrolment page, scan, confirm."""
    page = client.get("/account/2fa/enrol/")
    assert page.status_code == 200
    device = TOTPDevice.objects.get(user=user, confirmed=False)
    secret = base64.b32encode(device.bin_key).decode().rstrip("=")
    assert " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)) in page.content.decode()
    assert 'src="data:image/svg+xml' in page.content.decode()  # the QR code, inline
    answer = client.post("/account/2fa/enrol/", {"code": code_for(device)})
    assert answer.status_code == 302 and answer["Location"].startswith("/account/2fa/backup-codes/")
    device.refresh_from_db()
    assert device.confirmed
    return device


@pytest.fixture
def enrolled(nurse: Any, clock: Clock) -> TOTPDevice:
    client = Client()
    client.force_login(nurse)
    device = enrol(client, nurse)
    clock.step()  # the confirming code is used up
    return device


def verify(client: Client, code: str, next_url: str = "/admin/") -> Any:
    return client.post(f"/account/2fa/verify/?next={next_url}", {"code": code, "next": next_url})


# ---------------------------------------------------------------------------- enrolment and login


def test_a_staff_user_enrols_with_a_code_from_the_app_and_gets_backup_codes(nurse: Any, clock: Clock) -> None:
    client = Client()
    client.force_login(nurse)
    assert "is <strong>off</strong>" in client.get("/account/2fa/").content.decode()
    device = enrol(client, nurse)
    codes = list(StaticToken.objects.filter(device__user=nurse).values_list("token", flat=True))
    assert len(codes) == 10
    page = client.get("/account/2fa/backup-codes/").content.decode()
    assert all(code in page for code in codes)
    # The enrolling session is verified: the admin answers at once.
    assert client.get("/admin/").status_code == 200
    assert "is <strong>on</strong>" in client.get("/account/2fa/").content.decode()
    assert device.name == "Authenticator app"


def test_every_admin_page_links_to_the_users_own_two_factor_settings(nurse: Any) -> None:
    client = Client()
    client.force_login(nurse)
    assert 'href="/account/2fa/"' in client.get("/admin/").content.decode()


def test_a_wrong_code_does_not_confirm_the_enrolment(nurse: Any, clock: Clock) -> None:
    client = Client()
    client.force_login(nurse)
    client.get("/account/2fa/enrol/")
    device = TOTPDevice.objects.get(user=nurse)
    wrong = f"{(int(code_for(device)) + 1) % 1_000_000:06d}"
    answer = client.post("/account/2fa/enrol/", {"code": wrong})
    assert answer.status_code == 200
    assert "does not match" in answer.content.decode()
    device.refresh_from_db()
    assert not device.confirmed and not StaticToken.objects.exists()


def test_after_the_password_the_login_asks_for_the_code_then_goes_where_it_was_going(
    nurse: Any, enrolled: TOTPDevice, clock: Clock
) -> None:
    client = Client()
    answer = password_login(client, nurse.username, "/work/")
    assert answer.status_code == 302 and answer["Location"] == "/work/"
    held = client.get("/work/")
    assert held.status_code == 302
    assert held["Location"] == "/account/2fa/verify/?next=%2Fwork%2F"
    assert "code from your authenticator app" in client.get(held["Location"]).content.decode()
    answer = verify(client, code_for(enrolled), "/work/")
    assert answer.status_code == 302 and answer["Location"] == "/work/"
    assert client.get("/work/").status_code == 200
    assert client.get("/admin/").status_code == 200


def test_a_wrong_code_is_refused_and_the_session_stays_held(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    client = Client()
    password_login(client, nurse.username)
    wrong = f"{(int(code_for(enrolled)) + 1) % 1_000_000:06d}"
    answer = verify(client, wrong)
    assert answer.status_code == 200
    assert "That code is not right" in answer.content.decode()
    assert client.get("/admin/")["Location"].startswith("/account/2fa/verify/")
    # A code already used once is refused too (replay).
    clock.step()
    good = code_for(enrolled)
    assert verify(client, good).status_code == 302
    other = Client()
    password_login(other, nurse.username)
    assert verify(other, good).status_code == 200


def test_a_backup_code_signs_in_once(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    code = StaticToken.objects.filter(device__user=nurse).first().token  # type: ignore[union-attr]
    client = Client()
    password_login(client, nurse.username)
    assert verify(client, code.upper()).status_code == 302  # typed in capitals: still accepted
    assert client.get("/admin/").status_code == 200
    clock.step()
    again = Client()
    password_login(again, nurse.username)
    assert verify(again, code).status_code == 200  # used up
    assert StaticToken.objects.filter(device__user=nurse).count() == 9


def test_new_backup_codes_replace_the_old_ones(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    old = set(StaticToken.objects.filter(device__user=nurse).values_list("token", flat=True))
    client = Client()
    password_login(client, nurse.username)
    verify(client, code_for(enrolled))
    assert client.post("/account/2fa/backup-codes/").status_code == 302
    new = set(StaticToken.objects.filter(device__user=nurse).values_list("token", flat=True))
    assert len(new) == 10 and not (old & new)
    page = client.get("/account/2fa/backup-codes/").content.decode()
    assert all(code in page for code in new)


def test_removing_the_device_needs_a_fresh_code(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    client = Client()
    password_login(client, nurse.username)
    verify(client, code_for(enrolled))
    clock.step()
    assert (
        client.post("/account/2fa/remove/", {"code": "000000" if code_for(enrolled) != "000000" else "111111"}).status_code == 200
    )
    assert TOTPDevice.objects.filter(user=nurse).exists()
    clock.step()
    assert client.post("/account/2fa/remove/", {"code": code_for(enrolled)}).status_code == 302
    assert not TOTPDevice.objects.filter(user=nurse).exists() and not StaticToken.objects.exists()
    # From now on the password alone signs in again.
    fresh = Client()
    password_login(fresh, nurse.username)
    assert fresh.get("/admin/").status_code == 200


def test_when_required_the_device_cannot_be_removed(nurse: Any, enrolled: TOTPDevice, clock: Clock, settings: Any) -> None:
    settings.PUMPTRACK_REQUIRE_2FA = True
    client = Client()
    password_login(client, nurse.username)
    verify(client, code_for(enrolled))
    clock.step()
    assert client.post("/account/2fa/remove/", {"code": code_for(enrolled)}).status_code == 302
    assert TOTPDevice.objects.filter(user=nurse, confirmed=True).exists()


def test_without_a_device_and_not_required_the_password_alone_signs_in(nurse: Any) -> None:
    client = Client()
    assert password_login(client, nurse.username, "/work/")["Location"] == "/work/"
    assert client.get("/work/").status_code == 200


# ---------------------------------------------------------------------------- a held session reaches nothing


@pytest.mark.parametrize(
    "path",
    ["/admin/", "/admin/pumps/pump/", "/work/", "/account/2fa/", "/account/2fa/backup-codes/", "/account/2fa/remove/"],
)
def test_a_password_only_session_of_an_enrolled_user_is_sent_to_the_code_page(
    path: str, nurse: Any, enrolled: TOTPDevice
) -> None:
    client = Client()
    password_login(client, nurse.username)
    answer = client.get(path)
    assert answer.status_code == 302 and answer["Location"].startswith("/account/2fa/verify/?next=")


@pytest.mark.parametrize("path", ["/api/v1/pumps/", "/api/v1/tokens/", "/fhir/Patient"])
def test_a_password_only_session_gets_no_data_from_the_api(path: str, nurse: Any, enrolled: TOTPDevice) -> None:
    client = Client()
    password_login(client, nurse.username)
    for accept in ("application/json", "text/html"):  # JSON and the browsable API
        answer = client.get(path, HTTP_ACCEPT=accept)
        assert answer.status_code == 403
        assert "two-factor code" in answer.json()["detail"]


def test_logging_out_is_possible_from_the_code_page(nurse: Any, enrolled: TOTPDevice) -> None:
    client = Client()
    password_login(client, nurse.username)
    client.post("/admin/logout/")
    assert "_auth_user_id" not in client.session


# ---------------------------------------------------------------------------- PUMPTRACK_REQUIRE_2FA


@pytest.fixture
def required(settings: Any) -> None:
    settings.PUMPTRACK_REQUIRE_2FA = True


@pytest.mark.usefixtures("required")
@pytest.mark.parametrize("path", ["/admin/", "/admin/pumps/pump/", "/work/", "/account/2fa/verify/"])
def test_when_required_staff_without_a_device_are_sent_to_enrol(path: str, nurse: Any) -> None:
    client = Client()
    password_login(client, nurse.username)
    answer = client.get(path)
    assert answer.status_code == 302 and answer["Location"].startswith("/account/2fa/enrol/?next=")


@pytest.mark.usefixtures("required")
@pytest.mark.parametrize("path", ["/api/v1/pumps/", "/fhir/Patient"])
def test_when_required_the_session_api_refuses_staff_without_a_device(path: str, nurse: Any) -> None:
    client = Client()
    password_login(client, nurse.username)
    answer = client.get(path, HTTP_ACCEPT="application/json")
    assert answer.status_code == 403 and "set up an authenticator app" in answer.json()["detail"]


@pytest.mark.usefixtures("required")
def test_when_required_enrolment_right_after_the_password_opens_everything(nurse: Any, clock: Clock) -> None:
    client = Client()
    assert password_login(client, nurse.username, "/work/")["Location"] == "/work/"
    held = client.get("/work/")
    assert held["Location"] == "/account/2fa/enrol/?next=%2Fwork%2F"
    assert "requires two-factor authentication" in client.get(held["Location"]).content.decode()
    device = TOTPDevice.objects.get(user=nurse)
    answer = client.post(held["Location"], {"code": code_for(device), "next": "/work/"})
    assert answer["Location"] == "/account/2fa/backup-codes/?next=/work/"
    assert client.get("/work/").status_code == 200
    assert client.get("/api/v1/pumps/", HTTP_ACCEPT="application/json").status_code == 200


@pytest.mark.usefixtures("required")
def test_when_required_a_verified_session_works_normally(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    client = Client()
    password_login(client, nurse.username)
    verify(client, code_for(enrolled))
    for path in ("/admin/", "/work/", "/admin/pumps/pump/"):
        assert client.get(path).status_code == 200
    assert client.get("/api/v1/pumps/", HTTP_ACCEPT="application/json").status_code == 200


@pytest.mark.usefixtures("required")
def test_when_required_token_authentication_is_unaffected(nurse: Any) -> None:
    from api_support import api_client

    assert api_client(nurse).get("/api/v1/pumps/").status_code == 200


# ---------------------------------------------------------------------------- django-axes through the code step


def test_wrong_codes_count_as_failed_logins_and_lock_out(nurse: Any, enrolled: TOTPDevice, clock: Clock, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    password_login(client, nurse.username)
    wrong = "000000" if code_for(enrolled) != "000000" else "111111"
    assert verify(client, wrong).status_code == 200
    clock.step(5)  # past django-otp's own throttle (1 s, then 2 s)
    assert verify(client, wrong).status_code == 200
    clock.step(5)
    assert verify(client, wrong).status_code == 429  # the third failure locks out
    assert "_auth_user_id" not in client.session  # and ends the half-open session
    clock.step()
    again = Client()
    assert password_login(again, nurse.username).status_code == 429  # even the right password


def test_the_code_page_is_throttled_after_a_wrong_code(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    client = Client()
    password_login(client, nurse.username)
    right = code_for(enrolled)
    wrong = "000000" if right != "000000" else "111111"
    verify(client, wrong)
    # Within django-otp's delay even the right code is refused (guessing is slowed down).
    assert verify(client, right).status_code == 200
    clock.step(2)
    assert verify(client, code_for(enrolled)).status_code == 302


# ---------------------------------------------------------------------------- the API's password endpoint


def basic_client(user: Any) -> APIClient:
    client = APIClient()
    basic = base64.b64encode(f"{user.username}:{PASSWORD}".encode()).decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {basic}")
    return client


def test_the_password_endpoint_needs_the_code_of_an_enrolled_user(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    client = basic_client(nurse)
    missing = client.post("/api/v1/tokens/", {"name": "EHR"}, format="json")
    assert missing.status_code == 400 and "send the code" in missing.json()["otp"][0]
    wrong = "000000" if code_for(enrolled) != "000000" else "111111"
    refused = client.post("/api/v1/tokens/", {"name": "EHR", "otp": wrong}, format="json")
    assert refused.status_code == 400 and "not right" in refused.json()["otp"][0]
    assert not ApiToken.objects.exists()
    clock.step()
    made = client.post("/api/v1/tokens/", {"name": "EHR", "otp": code_for(enrolled)}, format="json")
    assert made.status_code == 201 and made.json()["key"]
    assert "otp" not in made.json()


def test_the_password_endpoint_takes_a_backup_code(nurse: Any, enrolled: TOTPDevice) -> None:
    code = StaticToken.objects.filter(device__user=nurse).first().token  # type: ignore[union-attr]
    assert basic_client(nurse).post("/api/v1/tokens/", {"name": "EHR", "otp": code}, format="json").status_code == 201


def test_wrong_codes_at_the_password_endpoint_lock_out(nurse: Any, enrolled: TOTPDevice, clock: Clock, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = basic_client(nurse)
    wrong = "000000" if code_for(enrolled) != "000000" else "111111"
    for _ in range(3):
        client.post("/api/v1/tokens/", {"name": "x", "otp": wrong}, format="json")
        clock.step(5)
    clock.step()
    # Locked: the password is refused now, whatever the code (axes answers "no user": 401).
    assert client.post("/api/v1/tokens/", {"name": "x", "otp": code_for(enrolled)}, format="json").status_code == 401
    assert not ApiToken.objects.exists()


def test_without_a_device_the_password_endpoint_works_as_before(nurse: Any) -> None:
    assert basic_client(nurse).post("/api/v1/tokens/", {"name": "EHR"}, format="json").status_code == 201


@pytest.mark.usefixtures("required")
def test_when_required_the_password_endpoint_refuses_staff_without_a_device(nurse: Any) -> None:
    answer = basic_client(nurse).post("/api/v1/tokens/", {"name": "EHR"}, format="json")
    assert answer.status_code == 403
    assert "set up an authenticator app" in answer.json()["otp"][0]
    assert not ApiToken.objects.exists()


def test_a_verified_session_creates_tokens_without_a_code(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    client = Client()
    password_login(client, nurse.username)
    verify(client, code_for(enrolled))
    answer = client.post("/api/v1/tokens/", {"name": "EHR"}, content_type="application/json")
    assert answer.status_code == 201


def test_the_schema_documents_the_otp_field() -> None:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    request = schema["paths"]["/api/v1/tokens/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    component = schema["components"]["schemas"][request.rsplit("/", 1)[1]]
    assert component["properties"]["otp"]["writeOnly"] is True
    assert "otp" not in component.get("required", [])
    assert {"201", "400", "403"} <= set(schema["paths"]["/api/v1/tokens/"]["post"]["responses"])


# ---------------------------------------------------------------------------- the admin reset


def test_a_superuser_resets_a_lost_device_and_the_admin_log_says_so(nurse: Any, enrolled: TOTPDevice, clock: Clock) -> None:
    boss = User.objects.create_superuser("boss", "boss@example.org", PASSWORD)
    client = Client()
    password_login(client, "boss")
    page = client.get("/admin/twofactor/stafftwofactor/").content.decode()
    assert nurse.username in page and "reset_two_factor" in page
    answer = client.post(
        "/admin/twofactor/stafftwofactor/", {"action": "reset_two_factor", "_selected_action": [nurse.pk]}, follow=True
    )
    assert "Two-factor authentication reset for " + nurse.username in answer.content.decode()
    assert not TOTPDevice.objects.filter(user=nurse).exists() and not StaticToken.objects.exists()
    entry = LogEntry.objects.get(object_id=str(nurse.pk))
    assert entry.user == boss and entry.content_type == ContentType.objects.get_for_model(User)
    assert "Reset two-factor authentication" in entry.get_change_message()
    # The user signs in with the password again (and would be sent to enrol when required).
    fresh = Client()
    password_login(fresh, nurse.username)
    assert fresh.get("/admin/").status_code == 200


def test_only_a_superuser_may_reset(clinic_a: Clinic, nurse: Any, enrolled: TOTPDevice) -> None:
    from django.contrib.auth.models import Permission

    manager = staff((clinic_a, Role.CLINICIAN))
    manager.user_permissions.add(*Permission.objects.filter(content_type__app_label="twofactor"))
    client = Client()
    client.force_login(manager)
    page = client.get("/admin/twofactor/stafftwofactor/")
    assert page.status_code == 200 and "reset_two_factor" not in page.content.decode()
    client.post("/admin/twofactor/stafftwofactor/", {"action": "reset_two_factor", "_selected_action": [nurse.pk]})
    assert TOTPDevice.objects.filter(user=nurse, confirmed=True).exists()


def test_the_device_keys_are_not_shown_in_the_admin(nurse: Any, enrolled: TOTPDevice) -> None:
    boss = User.objects.create_superuser("boss", "boss@example.org", PASSWORD)
    client = Client()
    client.force_login(boss)
    assert client.get("/admin/otp_totp/totpdevice/").status_code == 404
    assert not re.search(enrolled.key, client.get("/admin/twofactor/stafftwofactor/").content.decode())
