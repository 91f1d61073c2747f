"""Celery tasks for outbound webhooks: thin faces over `webhooks.services` (STYLE.md §8).

IDs in, one service call, JSON arguments, `acks_late`. Retries are rows, not Celery
retries: a failed delivery records its next attempt and the sweep queues it when it is due,
so a retry survives a worker restart and a broker that lost its queue.
"""

from __future__ import annotations

import socket

from celery import Task, shared_task
from django.utils import timezone

from webhooks import services

WORKER = socket.gethostname()


@shared_task(bind=True, acks_late=True, ignore_result=True)
def deliver_webhook(self: Task, delivery_id: int) -> str:
    # The worker's node name (`celery worker -n webhooks@%h`): each attempt says which worker sent it.
    return services.deliver(delivery_id, timezone.now(), worker=self.request.hostname or WORKER).outcome


@shared_task(acks_late=True)
def webhook_sweep() -> int:
    """Every 30 seconds: queue deliveries whose retry is due, whose task was lost, or whose
    worker died (claim expired)."""
    ids = services.dispatch_due(timezone.now())
    for pk in ids:
        deliver_webhook.delay_on_commit(pk)  # after any surrounding transaction, never inside it
    return len(ids)
