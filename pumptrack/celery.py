"""The Celery application, wired the standard way (cookiecutter-django).

The beat schedule lives here, in code, where review can see it.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")

app = Celery("pumptrack")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Periodic jobs. Each is safe to run twice at once (STYLE.md §8).
app.conf.beat_schedule = {
    # Re-plan every pump's messages and raise due escalations (DESIGN.md "Messages").
    "plan-messages": {"task": "notifications.tasks.plan_sweep", "schedule": 15 * 60},
    # Send what is due.
    "dispatch-messages": {"task": "notifications.tasks.dispatch_sweep", "schedule": 60},
    "recompute-refill-schedules": {
        "task": "pumps.tasks.recompute_all_schedules",
        "schedule": 60 * 60,
    },
}
