"""Which Celery queue each task goes to when PUMPTRACK_CELERY_QUEUES is on (docs/deployment.md).

Four kinds of work, each on a queue of its own, so that a slow SMS provider holds up
neither email nor the planning sweeps, and each kind of worker can be sized and placed
on its own machine:

- planning: the sweeps that plan, recompute and pick what is due (database work);
- email, sms: one send task per message, by the message's channel (waiting on SMTP, Twilio);
- webhooks: the webhook sweep and its deliveries (waiting on receivers).

Off (the default: the demo, tests), nothing is routed and every task goes to
CELERY_TASK_DEFAULT_QUEUE, as a single worker expects.
"""

from __future__ import annotations

PLANNING, EMAIL, SMS, WEBHOOKS = "planning", "email", "sms", "webhooks"
KINDS = (PLANNING, EMAIL, SMS, WEBHOOKS)

# Routed by name. notifications.tasks.send_message is routed when it is queued, by the
# channel of its message (`send_options`); a task missing here goes to the default queue.
TASK_QUEUES = {
    "notifications.tasks.plan_sweep": PLANNING,
    "notifications.tasks.replan_pumps": PLANNING,
    # It only picks what is due and queues the sends: quick, and beside the other sweeps.
    "notifications.tasks.dispatch_sweep": PLANNING,
    "pumps.tasks.recompute_all_schedules": PLANNING,
    "webhooks.tasks.webhook_sweep": WEBHOOKS,
    "webhooks.tasks.deliver_webhook": WEBHOOKS,
}
# A message's channel (notifications.models.Channel) -> the queue its send task goes to.
CHANNEL_QUEUES = {"email": EMAIL, "sms": SMS}


def task_routes(prefix: str) -> dict[str, dict[str, str]]:
    """Celery's `task_routes` for the queues named `prefix` + kind."""
    return {task: {"queue": prefix + kind} for task, kind in TASK_QUEUES.items()}


def send_options(channel: str) -> dict[str, str]:
    """`apply_async` options for sending a message on `channel`: its channel's queue when
    queues are on, else none (Celery's default queue)."""
    from django.conf import settings

    kind = CHANNEL_QUEUES.get(channel)
    if not settings.PUMPTRACK_CELERY_QUEUES or kind is None:
        return {}
    return {"queue": settings.PUMPTRACK_CELERY_QUEUE_PREFIX + kind}
