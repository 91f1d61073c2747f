"""`manage.py recompute_schedules [--clinic ID]`: re-store every active pump's dates now.

What the hourly `pumps.tasks.recompute_all_schedules` sweep does, in this process and with
no worker, for operations: after restoring a backup, after a fix to the refill
arithmetic, or when a worker has been down. Unlike the sweep, a pump whose dates changed has
its messages re-planned as soon as they are stored (the sweep leaves that to the planning
sweep that follows it), so the outbox is right when the command ends.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from patients.models import Clinic
from pumps import services
from pumps.models import Pump, PumpStatus
from pumptrack.progress import ProgressBar

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Recompute and store the alarm and refill-by dates of every active pump (or one clinic's) "
        "from its recorded history, and re-plan the messages of those whose dates changed. Shows a progress bar on a terminal. "
        "A pump that fails is logged and the others done; the command then fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic", type=int, metavar="ID", help="Only this clinic's pumps (its id).")

    def handle(self, *args: Any, **options: Any) -> None:
        pumps = Pump.objects.filter(status=PumpStatus.ACTIVE)
        if options["clinic"] is not None:
            if not Clinic.objects.filter(pk=options["clinic"]).exists():
                raise CommandError(f"--clinic {options['clinic']}: no such clinic.")
            pumps = pumps.filter(patient__clinic_id=options["clinic"])
        ids = list(pumps.order_by("pk").values_list("pk", flat=True))
        verbose = int(options["verbosity"]) >= 1
        changed = 0
        failed: list[int] = []
        with ProgressBar(len(ids), label="recomputing pumps", stream=self.stdout, enabled=verbose) as bar:
            for pk in ids:
                try:
                    changed += self._recompute(pk)
                except Exception:
                    # One bad pump must not leave every later pump stale (STYLE.md anti-patterns).
                    logger.exception("recompute_schedules: pump %s failed", pk)
                    failed.append(pk)
                bar.advance()
        if verbose:
            self.stdout.write(f"Recomputed {len(ids) - len(failed)} active pumps: {changed} had different dates stored.")
        if failed:
            raise CommandError(f"{len(failed)} of {len(ids)} pumps failed (see the log): {failed[:20]}")

    @staticmethod
    def _recompute(pk: int) -> int:
        """1 if the pump's stored dates changed, else 0 (a pump gone or ended since: 0)."""
        with transaction.atomic():
            # Locked and re-read like a refill: one committed meanwhile must not be
            # overwritten with dates computed from an older history.
            pump = Pump.objects.select_for_update(of=("self",)).select_related("patient__clinic").filter(pk=pk).first()
            if pump is None or pump.status != PumpStatus.ACTIVE:
                return 0
            before = (pump.alarm_on, pump.refill_by)
            services.recompute_schedule(pump, announce=False)
            if (pump.alarm_on, pump.refill_by) == before:
                return 0
            # Re-planned after the commit, like any record that moves the dates; an unchanged
            # pump's messages are the planning sweep's (re-planning 100,000 would take minutes).
            services.announce_change([pump.pk])
            return 1
