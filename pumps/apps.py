from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.utils import timezone


def refill_recorded(sender: Any, refill: Any, **kwargs: Any) -> None:
    """A face like a task: reads the clock (for the visit's closing time), makes one service call."""
    from pumps import appointments

    appointments.on_refill_recorded(refill, timezone.now())


class PumpsConfig(AppConfig):
    name = "pumps"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from pumps.signals import refill_recorded as refill_signal

        # Sent inside the recording transaction: the booked visit is closed with the refill,
        # or not at all if the refill rolls back.
        refill_signal.connect(refill_recorded, dispatch_uid="pumps.appointments.refill_recorded")
