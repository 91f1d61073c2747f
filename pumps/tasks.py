"""Celery tasks for pumps: thin faces over `pumps.services` (STYLE.md §8)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction

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
    pumps = Pump.objects.filter(status=PumpStatus.ACTIVE).select_related("patient__clinic").order_by("pk")
    done = 0
    failed: list[int] = []
    for pump in pumps.iterator(chunk_size=500):
        try:
            with transaction.atomic():
                # Lock and re-read the row: a refill or programming change committed since
                # the sweep started (they lock the pump too) must not be overwritten with
                # dates computed from an older history.
                locked = Pump.objects.select_for_update(of=("self",)).select_related("patient__clinic").filter(pk=pump.pk).first()
                if locked is not None:  # deleted since the sweep started: nothing to store
                    services.recompute_schedule(locked, announce=False)  # the planning sweep follows
        except Exception:
            logger.exception("recompute_all_schedules: pump %s failed", pump.pk)
            failed.append(pump.pk)
        else:
            done += 1
    if failed:
        raise ScheduleSweepFailed(f"{len(failed)} of {done + len(failed)} pumps failed: {failed[:20]}")
    logger.info("recompute_all_schedules: %s pumps recomputed", done)
    return done
