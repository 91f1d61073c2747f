"""The Celery application, wired the standard way (cookiecutter-django).

The beat schedule lives here, in code, where review can see it.
"""

import os
from typing import Any

from celery import Celery
from celery.signals import task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")

app = Celery("pumptrack")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def drop_unusable_connections(**kwargs: Any) -> None:
    """A worker keeps its database connection across tasks (CELERY_DB_REUSE_MAX): one broken
    by a PostgreSQL restart is dropped here, so the task opens a fresh one instead of failing."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.is_usable():
            conn.close()


task_prerun.connect(drop_unusable_connections)


# Periodic jobs. Each is safe to run twice at once (STYLE.md §8).
app.conf.beat_schedule = {
    # Re-plan every pump's messages and raise due escalations (DESIGN.md "Messages").
    "plan-messages": {"task": "notifications.tasks.plan_sweep", "schedule": 15 * 60},
    # Send what is due.
    "dispatch-messages": {"task": "notifications.tasks.dispatch_sweep", "schedule": 60},
    # Outbound webhooks: queue retries that are due and deliveries a lost task or a dead
    # worker left behind (webhooks/services.py dispatch_due).
    "dispatch-webhooks": {"task": "webhooks.tasks.webhook_sweep", "schedule": 30},
    "recompute-refill-schedules": {
        "task": "pumps.tasks.recompute_all_schedules",
        "schedule": 60 * 60,
    },
}
