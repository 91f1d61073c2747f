"""Celery tasks for messages: thin faces over `notifications.services` (STYLE.md §8).

IDs in, one service call, JSON arguments, `acks_late`; send tasks are queued only after
the dispatch sweep's transaction commits.
"""

from __future__ import annotations

import socket

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from notifications import services
from pumptrack import queues

WORKER = socket.gethostname()


@shared_task(acks_late=True)
def plan_sweep() -> dict[str, int]:
    """Every 15 minutes: re-plan every pump and raise due escalations (the safety net)."""
    try:
        result = services.plan_all(timezone.now())
    except services.PlanningFailed as exc:
        # The other pumps were planned; the heartbeat says some were not (banner, /healthz).
        services.beat("plan", timezone.now(), str(exc), ok=False)
        raise
    services.beat("plan", timezone.now(), f"created {result.created}, cancelled {result.cancelled}")
    return result.__dict__


@shared_task(acks_late=True)
def dispatch_sweep() -> int:
    """Every minute: queue one send task per message that is due."""
    ids = services.dispatch_due(timezone.now())
    # With PUMPTRACK_CELERY_QUEUES each send goes to its channel's queue (pumptrack/queues.py).
    channels = services.channels_of(ids) if settings.PUMPTRACK_CELERY_QUEUES else {}
    for pk in ids:
        # After any surrounding transaction, never inside it.
        send_message.apply_async_on_commit((pk,), **queues.send_options(channels.get(pk, "")))
    services.beat("dispatch", timezone.now(), f"queued {len(ids)}")
    return len(ids)


@shared_task(bind=True, acks_late=True, ignore_result=True)  # nothing reads it: one Redis write less per message
def send_message(self: Task, message_id: int) -> str:
    # The worker's node name (`celery worker -n email@%h`): each attempt says which worker sent it.
    return services.send_message(message_id, timezone.now(), worker=self.request.hostname or WORKER).outcome


@shared_task(acks_late=True)
def replan_pumps(pump_ids: list[int]) -> dict[str, int]:
    return services.replan_pumps(pump_ids, timezone.now()).__dict__
