from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig

logger = logging.getLogger(__name__)


def replan_after_change(sender: Any, pump_ids: list[int], **kwargs: Any) -> None:
    """Re-plan a changed pump's messages right after its change commits.

    A handful of pumps is re-planned in this process, so the outbox is right when the
    page reloads; a large batch (a clinic's policy changed) goes to a worker.
    """
    from django.utils import timezone

    from notifications import services, tasks

    if len(pump_ids) <= 20:
        services.replan_pumps(pump_ids, timezone.now())
    else:
        tasks.replan_pumps.delay(list(pump_ids))


class NotificationsConfig(AppConfig):
    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from notifications import checks  # noqa: F401 (registers the system checks)
        from pumps.signals import schedule_changed

        schedule_changed.connect(replan_after_change, dispatch_uid="notifications.replan_after_change")
