"""Celery tasks for messages: thin faces over `notifications.services` (STYLE.md §8).

IDs in, one service call, JSON arguments, `acks_late`; send tasks are queued only after
the dispatch sweep's transaction commits.
"""

from __future__ import annotations

import socket
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from notifications import services
from pumptrack import queues

WORKER = socket.gethostname()

# A sweep that cannot reach the database cannot write its own heartbeat either. It retries
# every few seconds for about two minutes (then the heartbeat is stale anyway), carrying
# when and why it failed, and the first run that reaches the database records the outage
# as a failed beat (banner, /healthz) until the next sweep.
DATABASE_DOWN = (OperationalError, InterfaceError)
OUTAGE_RETRY_SECONDS = 3
OUTAGE_RETRIES = 40


def after_outage(done: str, failed_at: str, error: str) -> tuple[str, bool]:
    """The heartbeat's (detail, ok) for a sweep that finished, after an outage or not."""
    if not failed_at:
        return done, True
    return f"database unavailable from {failed_at[:19]} UTC ({error}); recovered: {done}", False


def retry_after_outage(task: Any, exc: Exception, failed_at: str, error: str) -> Exception:
    first = failed_at or timezone.now().isoformat()
    reason = error or type(exc).__name__  # the class only: driver messages name hosts and users
    result: Exception = task.retry(
        kwargs={"failed_at": first, "error": reason}, countdown=OUTAGE_RETRY_SECONDS, max_retries=OUTAGE_RETRIES, exc=exc
    )
    return result


@shared_task(acks_late=True)
def plan_sweep(failed_at: str = "", error: str = "") -> dict[str, int]:
    """Every 15 minutes: re-plan every pump and raise due escalations (the safety net)."""
    try:
        try:
            result = services.plan_all(timezone.now())
        except services.PlanningFailed as exc:
            # The other pumps were planned; the heartbeat says some were not (banner, /healthz).
            services.beat("plan", timezone.now(), str(exc), ok=False)
            raise
        detail, ok = after_outage(f"created {result.created}, cancelled {result.cancelled}", failed_at, error)
        services.beat("plan", timezone.now(), detail, ok=ok)
    except DATABASE_DOWN as exc:
        raise retry_after_outage(plan_sweep, exc, failed_at, error) from exc
    return result.__dict__


@shared_task(acks_late=True)
def dispatch_sweep(failed_at: str = "", error: str = "") -> int:
    """Every minute: queue one send task per message that is due."""
    try:
        ids = services.dispatch_due(timezone.now())
        # With PUMPTRACK_CELERY_QUEUES each send goes to its channel's queue (pumptrack/queues.py).
        channels = services.channels_of(ids) if settings.PUMPTRACK_CELERY_QUEUES else {}
        for pk in ids:
            # After any surrounding transaction, never inside it.
            send_message.apply_async_on_commit((pk,), **queues.send_options(channels.get(pk, "")))
        detail, ok = after_outage(f"queued {len(ids)}", failed_at, error)
        services.beat("dispatch", timezone.now(), detail, ok=ok)
    except DATABASE_DOWN as exc:
        raise retry_after_outage(dispatch_sweep, exc, failed_at, error) from exc
    return len(ids)


@shared_task(bind=True, acks_late=True, ignore_result=True)  # nothing reads it: one Redis write less per message
def send_message(self: Task, message_id: int) -> str:
    # The worker's node name (`celery worker -n email@%h`): each attempt says which worker sent it.
    return services.send_message(message_id, timezone.now(), worker=self.request.hostname or WORKER).outcome


@shared_task(acks_late=True)
def replan_pumps(pump_ids: list[int]) -> dict[str, int]:
    return services.replan_pumps(pump_ids, timezone.now()).__dict__
