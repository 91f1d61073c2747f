"""Load test: integrations and clinic staff against gunicorn + PostgreSQL (issue 6).

Every simulated user is a different clinic user with their own API token (the API limits
each token to `API_THROTTLE_RATE`, 600/min by default; one user here sends about one
request a second), so the rate limit is the deployed one. Most users are integrations
(lists, filters, one pump, its refills, the outbox, escalations, FHIR searches); one in
five is a coordinator who logs in through the admin form and opens the worklist.

1. Tokens, passwords and ids from a database made by `bench/generate.py` (and planned):

       DATABASE_URL=postgres://app:app@127.0.0.1:5432/bench_100k SECRET_KEY=x \\
           .venv/bin/python bench/locustfile.py --prepare 50 --out /tmp/locust_users.json

2. gunicorn on that database, then locust headless (see bench/README.md):

       LOCUST_USERS_FILE=/tmp/locust_users.json .venv/bin/locust -f bench/locustfile.py --headless \\
           -u 50 -r 5 -t 5m --host http://127.0.0.1:8000 --csv /tmp/locust --only-summary

A request fails when it answers anything but 200 (a 429 included) or takes over 60 s.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-locust-password-1"  # noqa: S105 (bench databases only)
STAFF_EVERY = 5  # one user in five is a coordinator at the worklist


def prepare(count: int, out: str) -> None:
    """Issue a token for `count` generated clinic users (one per clinic, then the next role)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from api.models import ApiToken
    from api.services import issue_token
    from patients.models import Membership
    from pumps.models import Pump

    memberships = list(
        Membership.objects.filter(role__in=("clinician", "nurse", "coordinator"))
        .select_related("user")
        .order_by("role", "clinic_id")[:count]
    )
    if len(memberships) < count:
        raise SystemExit(f"only {len(memberships)} clinic users: generate more clinics")
    password = make_password(PASSWORD)
    users = []
    for k, m in enumerate(memberships):
        staff = k % STAFF_EVERY == STAFF_EVERY - 1
        get_user_model().objects.filter(pk=m.user_id).update(is_staff=True, **({"password": password} if staff else {}))
        ApiToken.objects.filter(user=m.user, name="bench/locustfile.py").delete()
        _, key = issue_token(user=m.user, name="bench/locustfile.py", by=None)
        pumps = list(
            Pump.objects.filter(patient__clinic=m.clinic_id, status="active").order_by("?").values_list("pk", "patient_id")[:200]
        )
        users.append({"username": m.user.username, "token": key, "clinic": m.clinic_id, "staff": staff, "pumps": pumps})
    Path(out).write_text(json.dumps(users))
    print(f"{len(users)} users ({sum(u['staff'] for u in users)} at the worklist) written to {out}")


if __name__ == "__main__" and "--prepare" in sys.argv:
    args = sys.argv[1:]
    prepare(int(args[args.index("--prepare") + 1]), args[args.index("--out") + 1])
    raise SystemExit(0)


from locust import HttpUser, between, task  # noqa: E402 (the --prepare step runs without locust)
from locust.exception import StopUser  # noqa: E402

_USERS: list[dict[str, Any]] = json.loads(Path(os.environ["LOCUST_USERS_FILE"]).read_text())
_next = [0]


def _claim(staff: bool) -> dict[str, Any]:
    """The next unused prepared user of this kind: each simulated user is a different person."""
    for _ in range(len(_USERS)):
        candidate = _USERS[_next[0] % len(_USERS)]
        _next[0] += 1
        if candidate["staff"] == staff and not candidate.get("taken"):
            candidate["taken"] = True
            return candidate
    raise StopUser()


class Integration(HttpUser):
    """A clinic's integration: token, lists and filters, one pump, FHIR."""

    weight = STAFF_EVERY - 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.me = _claim(staff=False)
        self.client.headers.update({"Authorization": f"Token {self.me['token']}", "Accept": "application/json"})

    def _pump(self) -> tuple[int, int]:
        pump, patient = random.choice(self.me["pumps"])
        return pump, patient

    @task(3)
    def list_pumps(self) -> None:
        self.client.get(f"/api/v1/pumps/?page={random.randint(1, 5)}", name="/api/v1/pumps/?page=N")

    @task(3)
    def pumps_due(self) -> None:
        self.client.get("/api/v1/pumps/?due_within=120", name="/api/v1/pumps/?due_within=120")

    @task(1)
    def pumps_overdue(self) -> None:
        self.client.get("/api/v1/pumps/?overdue=true&ordering=refill_by", name="/api/v1/pumps/?overdue=true")

    @task(3)
    def pump_detail(self) -> None:
        self.client.get(f"/api/v1/pumps/{self._pump()[0]}/", name="/api/v1/pumps/{id}/")

    @task(2)
    def pump_refills(self) -> None:
        self.client.get(f"/api/v1/refills/?pump={self._pump()[0]}", name="/api/v1/refills/?pump={id}")

    @task(1)
    def messages(self) -> None:
        self.client.get("/api/v1/messages/?status=planned&status=due", name="/api/v1/messages/?status=planned,due")

    @task(1)
    def escalations(self) -> None:
        self.client.get("/api/v1/escalations/?status=open", name="/api/v1/escalations/?status=open")

    @task(1)
    def fhir_devices(self) -> None:
        self.client.get(f"/fhir/Device?patient={self._pump()[1]}", name="/fhir/Device?patient={id}")

    @task(1)
    def fhir_medication(self) -> None:
        self.client.get(f"/fhir/MedicationRequest?patient={self._pump()[1]}", name="/fhir/MedicationRequest?patient={id}")


class Coordinator(HttpUser):
    """Clinic staff in a browser: the admin login form, then the worklist and a pump's API page."""

    weight = 1
    wait_time = between(2, 5)

    def on_start(self) -> None:
        self.me = _claim(staff=True)
        page = self.client.get("/admin/login/", name="/admin/login/ (form)")
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        if match is None:
            page.failure("no CSRF token in the login form")
            raise StopUser()
        with self.client.post(
            "/admin/login/?next=/work/",
            data={"username": self.me["username"], "password": PASSWORD, "csrfmiddlewaretoken": match.group(1), "next": "/work/"},
            headers={"Referer": f"{self.host}/admin/login/"},
            name="/admin/login/ (post)",
            catch_response=True,
        ) as response:
            if "/admin/login/" in response.url:
                response.failure("login refused")
                raise StopUser()

    @task(3)
    def worklist(self) -> None:
        self.client.get("/work/", name="/work/ (worklist)")

    @task(1)
    def pump_json(self) -> None:
        pump = random.choice(self.me["pumps"])[0]
        self.client.get(f"/api/v1/pumps/{pump}/", name="/api/v1/pumps/{id}/ (session)")
