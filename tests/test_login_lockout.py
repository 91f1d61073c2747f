"""Repeated failed logins lock that user name out from that address (django-axes, issue 6)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from admin_support import staff
from django.test import Client
from rest_framework.test import APIClient

from patients.models import Clinic, Role

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"


@pytest.fixture
def nurse(clinic_a: Clinic) -> Any:
    user = staff((clinic_a, Role.NURSE))
    user.set_password(PASSWORD)
    user.save()
    return user


def admin_login(client: Client, username: str, password: str) -> Any:
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


def test_the_admin_locks_a_user_out_after_repeated_failures(nurse: Any, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    assert [admin_login(client, nurse.username, "wrong").status_code for _ in range(2)] == [200, 200]  # the form again
    assert admin_login(client, nurse.username, "wrong").status_code == 429  # the third failure locks
    # Locked: even the right password is refused until the cool-off ends.
    assert admin_login(client, nurse.username, PASSWORD).status_code == 429
    assert "_auth_user_id" not in client.session


def test_a_success_before_the_limit_resets_the_count(nurse: Any, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    admin_login(client, nurse.username, "wrong")
    admin_login(client, nurse.username, "wrong")
    assert admin_login(client, nurse.username, PASSWORD).status_code == 302
    client.logout()
    admin_login(client, nurse.username, "wrong")
    assert admin_login(client, nurse.username, PASSWORD).status_code == 302


def test_password_guesses_at_the_api_lock_out_too(nurse: Any, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    client = APIClient()

    def token_with(password: str) -> int:
        basic = base64.b64encode(f"{nurse.username}:{password}".encode()).decode()
        client.credentials(HTTP_AUTHORIZATION=f"Basic {basic}")
        return client.post("/api/v1/tokens/", {"name": "x"}, format="json").status_code

    assert [token_with("wrong") for _ in range(3)] == [401, 401, 401]
    # Locked: the right password is refused too (Django's authenticate() answers "no user"
    # when a backend denies, so DRF says 401) and no token is issued.
    assert token_with(PASSWORD) == 401
    assert not nurse.api_tokens.exists()
