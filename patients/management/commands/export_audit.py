"""`manage.py export_audit --patient ID --from YYYY-MM-DD --to YYYY-MM-DD [--format csv|json]`:
every change to one patient's records over a date range (clinic days, both included)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from patients import audit
from patients.models import Patient


class Command(BaseCommand):
    help = "Export the audit history of one patient's records for a date range (CSV or JSON on stdout)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patient", type=int, required=True, help="The patient's id.")
        parser.add_argument("--from", dest="start", required=True, help="First day, YYYY-MM-DD (the clinic's calendar).")
        parser.add_argument("--to", dest="end", required=True, help="Last day, YYYY-MM-DD (included).")
        parser.add_argument("--format", choices=["csv", "json"], default="csv")

    def handle(self, *args: Any, **options: Any) -> None:
        patient = Patient.objects.select_related("clinic").filter(pk=options["patient"]).first()
        if patient is None:
            raise CommandError(f"--patient: no patient with id {options['patient']}.")
        try:
            start, end = audit.parse_range(options["start"], options["end"])
        except ValidationError as exc:
            raise CommandError(" ".join(f"--{name}: {' '.join(msgs)}" for name, msgs in exc.message_dict.items())) from None
        found = audit.patient_entries(patient, start, end)
        self.stdout.write(audit.to_json(found) if options["format"] == "json" else audit.to_csv(found), ending="")
