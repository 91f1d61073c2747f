"""Every kind of page carries the content security policy, and inline code carries its nonce
(issue 6 hardening). The browser side (no violation in Chromium) is tests/e2e/test_csp_browser.py."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest
from admin_support import client_for, staff
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from notifications.services import unsubscribe_token
from patients.models import Clinic, Role
from pumps.models import Pump

pytestmark = pytest.mark.django_db

EXPECTED = {
    "default-src": "'self'",
    "script-src": "'self' 'nonce-*'",
    "style-src": "'self' 'nonce-*'",
    "style-src-attr": "'unsafe-hashes' 'sha256-*' 'sha256-*' 'sha256-*' 'sha256-*'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}


def directives(response: Any) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    parsed = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition(" ")
        parsed[name] = re.sub(r"'(nonce|sha256)-[^']+'", r"'\1-*'", value)
    return parsed


def nonce(response: Any) -> str | None:
    found = re.search(r"'nonce-([^']+)'", response["Content-Security-Policy"])
    return found.group(1) if found else None


def assert_strict(response: Any) -> None:
    assert response.status_code in (200, 302), response.status_code
    got = directives(response)
    for name, value in EXPECTED.items():
        if "nonce" in value and nonce(response) is None:
            # Pages without inline code get no nonce: 'self' alone.
            assert got[name] == value.replace(" 'nonce-*'", ""), (name, got)
        else:
            assert got[name] == value, (name, got)
    assert "unsafe-inline" not in response["Content-Security-Policy"] and "unsafe-eval" not in got["script-src"]


def inline_blocks_carry_the_nonce(response: Any) -> None:
    """Every inline <script> or <style> element of the page carries the header's nonce; no
    inline event handler (onclick=...) is left, no nonce could allow it."""
    html = response.content.decode()
    value = nonce(response)
    for tag in re.findall(r"<(?:script|style)\b[^>]*>", html):
        if "src=" in tag or 'type="application/json"' in tag:
            continue
        assert value and f'nonce="{value}"' in tag, tag
    assert not re.search(r"\son[a-z]+\s*=\s*\"", html), re.search(r"\son[a-z]+\s*=\s*\"[^\"]*\"", html)
    # A style attribute applies only if the policy lists its exact hash ('unsafe-hashes').
    for value in re.findall(r"\sstyle=\"([^\"]*)\"", html):
        digest = base64.b64encode(hashlib.sha256(value.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in response["Content-Security-Policy"], value


@pytest.fixture
def admin_client() -> Client:
    return client_for(User.objects.create_superuser("boss", "boss@example.org", "x"))


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/pumps/pump/",
        "pump_change",
        "pump_worksheet",
        "/admin/pumps/appointment/week/",
        "/admin/patients/patient/add/",
        "/admin/twofactor/stafftwofactor/",
        "/work/",
        "/api/docs/",
        "/api/v1/pumps/",
        "/account/2fa/",
        "/account/2fa/enrol/",
    ],
)
def test_signed_in_pages_send_the_strict_policy(path: str, admin_client: Client, pump_a: Pump) -> None:
    if path == "pump_change":
        path = reverse("admin:pumps_pump_change", args=[pump_a.pk])
    if path == "pump_worksheet":
        path = reverse("admin:pumps_pump_worksheet", args=[pump_a.pk])
    response = admin_client.get(path, HTTP_ACCEPT="text/html")
    assert_strict(response)
    if response["Content-Type"].startswith("text/html"):
        inline_blocks_carry_the_nonce(response)


def test_the_pump_page_with_its_charts_has_no_inline_code_without_nonce(admin_client: Client, pump_a: Pump) -> None:
    html = admin_client.get(reverse("admin:pumps_pump_change", args=[pump_a.pk])).content.decode()
    assert "<svg" in html  # the charts are inline SVG: markup, not script or style elements


@pytest.mark.parametrize("path", ["/admin/login/", "/healthz", "/fhir/metadata", "/nowhere/"])
def test_anonymous_answers_send_the_policy_too(path: str) -> None:
    response = Client().get(path)
    assert "Content-Security-Policy" in response
    assert directives(response)["default-src"] == "'self'"
    assert directives(response)["frame-ancestors"] == "'none'"


@pytest.mark.django_db
def test_the_patients_unsubscribe_page_styles_itself_within_the_policy() -> None:
    # A patient's page, reached from an email: its style must not be blocked.
    token = unsubscribe_token("email", "ann@example.org")
    response = Client().get(reverse("notifications:unsubscribe", args=[token]))
    assert_strict(response)
    inline_blocks_carry_the_nonce(response)


def test_fhir_answers_carry_the_policy(clinic_a: Clinic) -> None:
    from api_support import api_client

    client = api_client(staff((clinic_a, Role.VIEWER)))
    for path in ("/fhir/metadata", "/fhir/Patient?family=Nobody", "/fhir/Patient/0"):
        response = client.get(path)
        assert response["Content-Type"].startswith("application/fhir+json")
        assert directives(response)["default-src"] == "'self'", path


def test_the_code_page_sends_the_policy(admin_client: Client) -> None:
    # A held session's page (the verify step) is a page like any other.
    response = Client().get("/account/2fa/verify/")
    assert response.status_code == 302 and "Content-Security-Policy" in response


def test_each_request_gets_its_own_nonce(admin_client: Client) -> None:
    first = nonce(admin_client.get("/api/docs/"))
    second = nonce(admin_client.get("/api/docs/"))
    assert first and second and first != second


def test_report_only_is_one_setting_away(settings: Any, admin_client: Client) -> None:
    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = settings.CONTENT_SECURITY_POLICY
    settings.CONTENT_SECURITY_POLICY = None
    response = admin_client.get("/admin/")
    assert "Content-Security-Policy" not in response
    assert "frame-ancestors 'none'" in response["Content-Security-Policy-Report-Only"]
