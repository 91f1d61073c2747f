"""Under the content security policy, every kind of page works in Chromium with no violation
and no console error: the admin, the pump page with its charts, the worksheet, the week view,
the worklist, the API docs, the browsable API, FHIR, and the two-factor pages (enrolment with
its QR code, backup codes, the code step after the password)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import ConsoleMessage, Page, expect

from pumps.models import Pump

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

PASSWORD = "Csp-admin-2026"
# Recorded by the page itself: Chromium fires this event for each blocked (or reported) load.
WATCH_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`);
});
"""


class Watch:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.add_init_script(WATCH_VIOLATIONS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        # The browser's own favicon guess is not ours (no favicon.ico: a 404, not a violation).
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            self.errors.append(f"{self.page.url}: {message.text}")

    def visit(self, url: str, ready: str = "body") -> None:
        response = self.page.goto(url)
        assert response is not None and response.status == 200, (url, response and response.status)
        assert "content-security-policy" in response.headers, url
        self.page.wait_for_selector(ready, timeout=20_000)
        self.check(url)

    def check(self, where: str) -> None:
        self.page.wait_for_timeout(150)  # late loads (fonts, images) report after load
        violations = self.page.evaluate("window.__csp || []")
        assert violations == [], (where, violations)
        assert self.errors == [], (where, self.errors)


def login(page: Page, base: str, username: str, next_url: str = "/admin/") -> None:
    page.goto(f"{base}/admin/login/?next={next_url}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()


def code_for(device: TOTPDevice, ahead: int = 0) -> str:
    device.refresh_from_db()
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=ahead):06d}"


def test_every_page_kind_runs_under_the_policy(live_server: Any, page: Page, pump_a: Pump, output_path: str) -> None:
    User.objects.create_superuser("boss", "boss@example.org", PASSWORD)
    base = live_server.url
    watch = Watch(page)

    watch.visit(f"{base}/admin/login/", "#login-form")
    login(page, base, "boss")
    expect(page.locator("#site-name")).to_be_visible()
    watch.check("after login")

    pages = [
        ("/admin/", "#content-main"),
        ("/admin/pumps/pump/", "#changelist"),
        (reverse("admin:pumps_pump_change", args=[pump_a.pk]), "svg.pt-chart"),
        (reverse("admin:pumps_pump_worksheet", args=[pump_a.pk]), ".pt-sheet"),
        ("/admin/pumps/appointment/week/", "#content-main"),
        ("/admin/patients/patient/add/", "form"),
        ("/admin/pumps/refill/add/", "form"),
        ("/admin/twofactor/stafftwofactor/", "#changelist"),
        ("/work/", "body"),
        ("/api/docs/", ".opblock"),
        ("/api/v1/pumps/", ".response-info"),
        ("/api/v1/patients/", ".response-info"),
        ("/fhir/metadata", "body"),
        ("/account/2fa/", "#pt-2fa-status"),
    ]
    for path, ready in pages:
        watch.visit(base + path, ready)

    # The admin's JavaScript still runs: a date shortcut and the Swagger UI's expand button.
    watch.visit(f"{base}/admin/patients/patient/add/", "form")
    page.locator(".datetimeshortcuts a").first.click()
    watch.check("date shortcut")
    watch.visit(f"{base}/api/docs/", ".opblock")
    page.locator(".opblock-summary").first.click()
    expect(page.locator(".opblock-body").first).to_be_visible()
    watch.check("swagger expanded")

    # Two-factor: enrol by scanning (the QR code is a data: image), see the backup codes,
    # then sign in again with the code step.
    watch.visit(f"{base}/account/2fa/enrol/", "#pt-totp-qr")
    assert page.locator("#pt-totp-qr").evaluate("img => img.naturalWidth") > 0  # the QR image loaded
    Path(output_path).mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(Path(output_path) / "2fa-enrol.png"), full_page=True)
    device = TOTPDevice.objects.get(user__username="boss")
    page.fill("#id_code", code_for(device))
    page.get_by_role("button", name="Turn on two-factor authentication").click()
    expect(page.locator("#pt-backup-codes li")).to_have_count(10)
    watch.check("backup codes")

    page.get_by_role("button", name="Log out").click()
    login(page, base, "boss", "/work/")
    expect(page).to_have_url(re.compile(r"/account/2fa/verify/\?next="))
    watch.check("verify page")
    page.screenshot(path=str(Path(output_path) / "2fa-verify.png"), full_page=True)
    # The enrolment used this window's code (each is accepted once): the app's next one is
    # within django-otp's one-step tolerance.
    page.fill("#id_code", code_for(device, ahead=1))
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{base}/work/")
    watch.check("after the code")
