"""The Celery application, wired the standard way (cookiecutter-django).

The beat schedule lives here, in code, where review can see it.
"""

import os
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, task_prerun

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


def redact_row_values(logger: Any, **kwargs: Any) -> None:
    """Celery replaces Django's log handlers with its own: they get the same filter, so a
    failed task's database error logs no row values (README "What logs contain")."""
    from pumptrack.logfilters import install

    install(logger)


after_setup_logger.connect(redact_row_values)
after_setup_task_logger.connect(redact_row_values)


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
