"""Celery tasks for pumps: thin faces over `pumps.services` (STYLE.md §8)."""

from __future__ import annotations

import logging

from celery import shared_task

from pumps import services
from pumps.models import Pump, PumpStatus

logger = logging.getLogger(__name__)


class ScheduleSweepFailed(Exception):
    """Some pumps could not be recomputed; the others were stored."""


@shared_task(acks_late=True)
def recompute_all_schedules() -> int:
    """Re-store every active pump's alarm and refill-by dates from its recorded history.

    The hourly safety net behind the services, which store the dates after every write.
    One bad pump must not stop the sweep (a crash-looping scheduler would leave every
    later pump stale), so each error is logged and the sweep goes on; the task still
    fails at the end so the error shows in the worker's result and monitoring.
    Returns how many pumps were recomputed.
    """
    ids = Pump.objects.filter(status=PumpStatus.ACTIVE).order_by("pk").values_list("pk", flat=True)
    result = services.recompute_many(ids.iterator(chunk_size=2000), announce_changed=False)  # the planning sweep follows
    if result.failed:
        total = result.done + len(result.failed)
        raise ScheduleSweepFailed(f"{len(result.failed)} of {total} pumps failed: {result.failed[:20]}")
    logger.info("recompute_all_schedules: %s pumps recomputed", result.done)
    return result.done
