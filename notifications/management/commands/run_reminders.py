"""`manage.py run_reminders [--as-of TIME]`: plan and send every reminder for one moment.

What the plan and dispatch sweeps do on Celery beat, in this process and with no worker:
re-plan every pump (raising escalations that are due), then send every message due at
that moment. For operations (a broker is down; catch up by hand) and demos.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from notifications import services
from notifications.models import Escalation, EscalationStatus, Severity
from notifications.tasks import WORKER
from pumps.models import Pump, PumpStatus
from pumptrack.progress import ProgressBar

# send_message's outcomes as the summary names them.
OUTCOMES = {
    "sent": "sent",
    "deferred": "deferred",
    "suppressed": "suppressed",
    "retry": "failed (will retry)",
    "failed_permanently": "failed permanently",
    "not_claimed": "taken by another worker",
}


def parse_as_of(value: str) -> datetime:
    """An ISO 8601 date and time; one without an offset is UTC."""
    try:
        moment = parse_datetime(value.strip())
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(
            f"--as-of {value!r} is not a date and time: use ISO 8601, e.g. 2027-02-01T10:00 or 2027-02-01T10:00:00+01:00."
        )
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Plan every pump's messages and escalations, then send everything due, for one moment "
        "(default: now), in this process: no Celery worker needed. Records the sweeps' heartbeats "
        "and prints what happened. SMS go to PUMPTRACK_SMS_BACKEND (the console by default), email "
        "to EMAIL_BACKEND."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--as-of",
            metavar="TIME",
            help="The moment to plan and send for, ISO 8601 (e.g. 2027-02-01T10:00+00:00; no offset means UTC). Default: now.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        as_of = parse_as_of(options["as_of"]) if options["as_of"] is not None else timezone.now()
        verbose = int(options["verbosity"]) >= 1
        raised_before = Escalation.objects.count()

        # 1. Plan: the safety-net sweep. A pump that fails is logged and the rest planned;
        # sending still goes ahead, then the command fails.
        failure: services.PlanningFailed | None = None
        # plan_all also takes ended pumps that still hold unsent messages: the bar's total
        # grows to the count it reports.
        active = Pump.objects.filter(status=PumpStatus.ACTIVE).count()
        with ProgressBar(active, label="planning pumps", stream=self.stdout, enabled=verbose) as bar:
            try:
                plan = services.plan_all(as_of, progress=bar)
            except services.PlanningFailed as exc:
                failure, plan = exc, services.ReconcileResult()
        if failure is not None:
            services.beat("plan", timezone.now(), f"run_reminders --as-of {as_of.isoformat()}: {failure}", ok=False)
        else:
            services.beat("plan", timezone.now(), f"run_reminders --as-of {as_of.isoformat()}: created {plan.created}")

        # 2. Dispatch and send in this process, until nothing more is due at that moment.
        # Each message is claimed atomically, so a worker running at the same time sends
        # nothing twice; a failure moves its next try past `as_of`, so the loop ends.
        outcomes: Counter[str] = Counter()
        with ProgressBar(0, label="sending messages", stream=self.stdout, enabled=verbose) as bar:
            while ids := services.dispatch_due(as_of):
                bar.total = (bar.total or 0) + len(ids)
                for pk in ids:
                    bar.clear()  # the console SMS and email backends print on this terminal too
                    outcomes[services.send_message(pk, as_of, worker=f"run_reminders@{WORKER}").outcome] += 1
                    bar.advance()
        services.beat("dispatch", timezone.now(), f"run_reminders --as-of {as_of.isoformat()}: {sum(outcomes.values())}")

        if verbose:
            self._summary(as_of, plan, outcomes, Escalation.objects.count() - raised_before)
        if failure is not None:
            raise CommandError(f"planning failed: {failure}")

    def _summary(self, as_of: datetime, plan: services.ReconcileResult, outcomes: Counter[str], raised: int) -> None:
        out = self.stdout.write
        out(f"Reminders as of {as_of.isoformat()}:")
        out(f"  planned: {plan.created} new, {plan.updated} updated, {plan.cancelled} cancelled")
        sent = ", ".join(f"{outcomes[key]} {label}" for key, label in OUTCOMES.items() if outcomes[key] or key == "sent")
        out(f"  sending: {sent}")
        open_rows = Escalation.objects.filter(status=EscalationStatus.OPEN)
        critical = open_rows.filter(severity=Severity.CRITICAL).count()
        out(f"  escalations: {raised} raised, {open_rows.count()} open ({critical} critical)")
