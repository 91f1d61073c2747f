"""The Celery application, wired the standard way (cookiecutter-django).

The beat schedule lives here, in code, where review can see it.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pumptrack.settings")

app = Celery("pumptrack")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Periodic jobs. The reminder and dispatch sweeps arrive with the reminders issue; the
# schedule recomputation below is the safety net for stored refill-by dates.
app.conf.beat_schedule = {
    "recompute-refill-schedules": {
        "task": "pumps.tasks.recompute_all_schedules",
        "schedule": 60 * 60,
    },
}
