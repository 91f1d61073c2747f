"""`manage.py recompute_schedules [--clinic ID]`: re-store every active pump's dates now.

What the hourly `pumps.tasks.recompute_all_schedules` sweep does, in this process and with
no worker, for operations: after restoring a backup, after a fix to the refill
arithmetic, or when a worker has been down. Unlike the sweep, a pump whose dates changed has
its messages re-planned as soon as they are stored (the sweep leaves that to the planning
sweep that follows it), so the outbox is right when the command ends.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from patients.models import Clinic
from pumps import services
from pumps.models import Pump, PumpStatus
from pumptrack.progress import ProgressBar


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
        with ProgressBar(len(ids), label="recomputing pumps", stream=self.stdout, enabled=verbose) as bar:
            result = services.recompute_many(ids, announce_changed=True, advance=bar.advance)
        if verbose:
            self.stdout.write(f"Recomputed {result.done} active pumps: {result.changed} had different dates stored.")
        if result.failed:
            raise CommandError(f"{len(result.failed)} of {len(ids)} pumps failed (see the log): {result.failed[:20]}")
