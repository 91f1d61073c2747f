from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.utils import timezone

# Receivers are faces like tasks: they read the clock (for when the delivery task is queued)
# and make one service call.


def refill_recorded(sender: Any, refill: Any, **kwargs: Any) -> None:
    from webhooks import services

    services.on_refill_recorded(refill, timezone.now())


def dose_changed(sender: Any, program: Any, **kwargs: Any) -> None:
    from webhooks import services

    services.on_dose_changed(program, timezone.now())


def escalations_raised(sender: Any, escalations: Any, **kwargs: Any) -> None:
    from webhooks import services

    services.on_escalations_raised(list(escalations), timezone.now())


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Outbound webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from notifications.signals import escalations_raised as escalations_signal
        from pumps.signals import dose_changed as dose_signal
        from pumps.signals import refill_recorded as refill_signal
        from webhooks import checks  # noqa: F401 (registers the system checks)

        # Sent inside the recording transaction: the receivers only insert delivery rows
        # (they commit or roll back with the record) and queue their tasks on commit.
        refill_signal.connect(refill_recorded, dispatch_uid="webhooks.refill_recorded")
        dose_signal.connect(dose_changed, dispatch_uid="webhooks.dose_changed")
        escalations_signal.connect(escalations_raised, dispatch_uid="webhooks.escalations_raised")
