"""Queues by kind of work (PUMPTRACK_CELERY_QUEUES, pumptrack/queues.py, docs/deployment.md).

Two real `celery worker` processes on different queues, as a deployment runs them: one for
planning and webhooks, one for email and SMS. Each task runs on the worker whose queues it
was routed to, and email and SMS wait in their queues while no worker consumes them.
The queue names get a prefix of their own per test (PUMPTRACK_CELERY_QUEUE_PREFIX), so no
other worker on the same Redis takes these tasks, and no task left from an earlier run
reaches these workers.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time as clock
import uuid
from collections.abc import Callable, Iterator
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SmtpSink, WorkerProcess, spawn_worker, stop_worker
from django.conf import settings as django_settings
from django.utils import timezone
from factories import ClinicFactory, implanted_pump, screened_patient
from twilio_fake import FakeTwilio, fake_twilio

from notifications.models import Attempt, Channel, Message, Status
from notifications.tasks import dispatch_sweep, plan_sweep
from pumptrack import queues
from pumptrack.celery import app as celery_app
from webhooks import services as webhook_services
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery

ROOT = Path(__file__).resolve().parent.parent
FROM_NUMBER = "+442071838700"

twilio = pytest.fixture(fake_twilio)


# ------------------------------------------------------------------------- routing tables


def test_every_channel_has_a_queue() -> None:
    assert set(queues.CHANNEL_QUEUES) == set(Channel.values)
    assert set(queues.CHANNEL_QUEUES.values()) <= set(queues.KINDS)


def test_every_task_of_ours_is_routed_so_none_waits_on_a_queue_no_worker_reads() -> None:
    celery_app.autodiscover_tasks(force=True)
    ours = {name for name in celery_app.tasks if not name.startswith("celery.")}
    # send_message is routed when queued, by its message's channel (test_each_task_runs_...).
    assert ours - {"notifications.tasks.send_message"} == set(queues.TASK_QUEUES)
    assert set(queues.TASK_QUEUES.values()) <= set(queues.KINDS)


def test_a_send_goes_to_its_channels_queue_only_when_queues_are_on(settings: Any) -> None:
    settings.PUMPTRACK_CELERY_QUEUES, settings.PUMPTRACK_CELERY_QUEUE_PREFIX = False, "site-"
    assert queues.send_options("email") == queues.send_options("sms") == {}
    settings.PUMPTRACK_CELERY_QUEUES = True
    assert queues.send_options("email") == {"queue": "site-email"}
    assert queues.send_options("sms") == {"queue": "site-sms"}
    assert queues.send_options("") == {}  # unknown: Celery's default queue, as an unrouted task


ROUTED = [*queues.TASK_QUEUES, "notifications.tasks.send_message", "celery.ping"]
ROUTER = (
    "import django, json; django.setup()\n"
    "from pumptrack.celery import app\n"
    f"print(json.dumps({{n: app.amqp.router.route({{}}, n)['queue'].name for n in {ROUTED!r}}}))"
)


def routes_in_a_fresh_process(**env: str) -> dict[str, str]:
    """Where Celery's own router sends each task, in a process started with `env`."""
    run = subprocess.run(
        [sys.executable, "-c", ROUTER],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PUMPTRACK_CELERY_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout.splitlines()[-1]))


def test_by_default_every_task_goes_to_the_default_queue() -> None:
    assert set(routes_in_a_fresh_process(CELERY_TASK_DEFAULT_QUEUE="main").values()) == {"main"}


def test_with_queues_on_each_task_goes_to_its_kinds_queue() -> None:
    routes = routes_in_a_fresh_process(PUMPTRACK_CELERY_QUEUES="true", PUMPTRACK_CELERY_QUEUE_PREFIX="site-")
    assert routes == {
        "notifications.tasks.plan_sweep": "site-planning",
        "notifications.tasks.replan_pumps": "site-planning",
        "notifications.tasks.dispatch_sweep": "site-planning",
        "pumps.tasks.recompute_all_schedules": "site-planning",
        "webhooks.tasks.webhook_sweep": "site-webhooks",
        "webhooks.tasks.deliver_webhook": "site-webhooks",
        # Queued with its channel's queue by the dispatch sweep; otherwise the default.
        "notifications.tasks.send_message": "celery",
        "celery.ping": "celery",
    }


def test_a_queue_prefix_that_would_split_a_worker_queue_list_stops_start_up() -> None:
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, "PUMPTRACK_CELERY_QUEUE_PREFIX": "a,b"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0 and "PUMPTRACK_CELERY_QUEUE_PREFIX" in run.stderr


# ------------------------------------------------------------------------- two workers


class Receiver:
    """An integrator's webhook receiver on loopback: answers 200 and counts the POSTs."""

    def __init__(self) -> None:
        self.posts: list[bytes] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.posts.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def routed(settings: Any) -> Iterator[str]:
    """This process routes as a deployment with PUMPTRACK_CELERY_QUEUES does, with a prefix
    of its own; yields the prefix. The queues are emptied afterwards (a re-queued send may
    remain, which its claim would make a no-op anyway)."""
    import redis

    prefix = f"pytest-{uuid.uuid4().hex[:8]}-"
    settings.PUMPTRACK_CELERY_QUEUES, settings.PUMPTRACK_CELERY_QUEUE_PREFIX = True, prefix
    before = celery_app.conf.task_routes
    celery_app.conf.update(task_routes=queues.task_routes(prefix))  # update(): Celery rebuilds its router
    try:
        yield prefix
    finally:
        celery_app.conf.update(task_routes=before)
        client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
        client.delete(*(prefix + kind for kind in (*queues.KINDS, "default")))
        client.close()


def queue_lengths(prefix: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    try:
        return {kind: int(client.llen(prefix + kind)) for kind in queues.KINDS}
    finally:
        client.close()


def wait_until(condition: Callable[[], Any], what: str, workers: list[WorkerProcess], timeout: float = 30) -> None:
    deadline = clock.monotonic() + timeout
    while not condition():
        if clock.monotonic() > deadline:
            logs = "\n".join(f"--- {w.node} ---\n{w.log_text()[-3000:]}" for w in workers)
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")
        clock.sleep(0.05)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_each_task_runs_on_the_worker_of_its_queue_and_email_waits_for_its_worker(
    tmp_path: Path, routed: str, smtp_sink: SmtpSink, twilio: FakeTwilio, receiver: Receiver
) -> None:
    prefix = routed
    now = timezone.now()
    # An overdue refill: the patient's overdue email and SMS (critical: no quiet hours, no
    # daily cap) and the staff escalation email are due now; the escalation is a webhook.
    clinic = ClinicFactory(
        time_zone="UTC",
        reminder_time=time(0),
        quiet_hours_start=time(0),
        quiet_hours_end=time(0),
        notification_email="itb-team@clinic.example.org",
    )
    webhook_services.create_endpoint(clinic=clinic, url=receiver.url, by=None, description="EHR", event_types=["refill.overdue"])
    ann = screened_patient(clinic=clinic, email="ann@example.org", phone="+442071234567", screened_at=now - timedelta(days=55))
    implanted_pump(patient=ann, implanted_at=now - timedelta(days=40))  # filled on a 30-day interval
    # Re-planned in this process on commit: its webhook delivery was routed by name.
    deliveries = list(WebhookDelivery.objects.all())
    assert deliveries and queue_lengths(prefix)[queues.WEBHOOKS] == len(deliveries)

    host = socket.gethostname()
    env = {
        "PUMPTRACK_CELERY_QUEUES": "true",
        "PUMPTRACK_CELERY_QUEUE_PREFIX": prefix,
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(django_settings.EMAIL_PORT),  # the smtp_sink's
        "EMAIL_USE_TLS": "false",
        **twilio.env(FROM_NUMBER),
    }
    # As docs/deployment.md runs them: planning also reads the default queue (anything unrouted).
    planner = spawn_worker(
        tmp_path / "planning.log",
        queue=f"{prefix}default",
        also=[prefix + queues.PLANNING, prefix + queues.WEBHOOKS],
        name="planning",
        env=env,
    )
    workers = [planner]
    try:
        wait_until(
            lambda: all(d.status == DeliveryStatus.SUCCEEDED for d in WebhookDelivery.objects.all()),
            "the webhook deliveries",
            workers,
        )
        assert len(receiver.posts) == len(deliveries)
        assert set(WebhookAttempt.objects.values_list("worker", flat=True)) == {f"{planner.node}@{host}"}

        assert "created" in plan_sweep.apply_async().get(timeout=60)  # routed by name: the planning worker's
        queued = dispatch_sweep.apply_async().get(timeout=30)
        rows = list(Message.objects.filter(queued_at__isnull=False))
        emails = [m for m in rows if m.channel == Channel.EMAIL]
        texts = [m for m in rows if m.channel == Channel.SMS]
        assert queued == len(rows) and len(emails) >= 2 and len(texts) >= 1
        # Every send waits in its channel's queue: no worker reads email or sms yet.
        assert queue_lengths(prefix) == {
            queues.PLANNING: 0,
            queues.EMAIL: len(emails),
            queues.SMS: len(texts),
            queues.WEBHOOKS: 0,
        }
        clock.sleep(1)
        assert not Attempt.objects.exists() and not smtp_sink.messages and not twilio.messages
        assert {m.status for m in rows} == {Status.DUE}

        sender = spawn_worker(
            tmp_path / "messages.log",
            queue=prefix + queues.EMAIL,
            also=[prefix + queues.SMS],
            name="messages",
            env=env,
        )
        workers.append(sender)
        wait_until(
            lambda: set(Message.objects.filter(pk__in=[m.pk for m in rows]).values_list("status", flat=True)) == {Status.SENT},
            "every queued message sent",
            workers,
        )
    finally:
        for worker in workers:
            stop_worker(worker)

    # Each message went out once, by the messages worker, whose node name its attempt records.
    assert list(Attempt.objects.values_list("worker", flat=True)) == [f"{sender.node}@{host}"] * len(rows)
    assert sorted(mail.rcpt_tos[0] for mail in smtp_sink.messages) == sorted(m.address for m in emails)
    assert sorted(sms.to for sms in twilio.messages) == sorted(m.address for m in texts)
    assert queue_lengths(prefix) == dict.fromkeys(queues.KINDS, 0)
    # The sweeps ran on the planning worker only; the sends on the messages worker only.
    for task in ("plan_sweep", "dispatch_sweep"):
        assert f"notifications.tasks.{task}[" in planner.log_text() and f"notifications.tasks.{task}[" not in sender.log_text()
    assert "webhooks.tasks.deliver_webhook[" not in sender.log_text()
    assert "notifications.tasks.send_message[" in sender.log_text()
    assert "notifications.tasks.send_message[" not in planner.log_text()
