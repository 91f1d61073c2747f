"""The hourly schedule sweep: run by a real `celery worker` process over Redis, and its
behaviour when one pump cannot be recomputed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from patients.models import Clinic, Diagnosis, Patient, SpasticityOrigin
from pumps import services
from pumps.models import Pump, PumpModel
from pumps.tasks import ScheduleSweepFailed, recompute_all_schedules

# A fixed clock: services take `now`, and the sweep computes from stored history only.
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def _pump_with_history(clinic_name: str = "Worker Test Clinic", serial_number: str = "NGP000001H") -> Pump:
    clinic = Clinic.objects.create(name=clinic_name, time_zone="Europe/London")
    patient = Patient.objects.create(
        clinic=clinic,
        mrn="W-1",
        given_name="Ada",
        family_name="Worker",
        birth_date=date(1980, 5, 17),
        diagnosis=Diagnosis.MULTIPLE_SCLEROSIS,
        spasticity_origin=SpasticityOrigin.SPINAL,
        screened_elsewhere=True,  # implant needs a positive screening on record
    )
    implanted_at = NOW - timedelta(days=20)
    pump = services.implant_pump(
        patient=patient,
        model=PumpModel.objects.get(model_number="8637-40"),
        serial_number=serial_number,
        implanted_at=implanted_at,
        now=NOW,
    )
    services.change_program(
        pump,
        services.ProgramInput(
            effective_at=implanted_at + timedelta(hours=1),
            dose_mcg_per_day=Decimal("100"),
            concentration_mcg_per_ml=Decimal("500"),
        ),
        by=None,
        now=NOW,
        # No screening dose in pumptrack to check the first dose against: acknowledged.
        acknowledged=["initial_dose_unusual"],
        reason="Screened at the referring hospital.",
    )
    services.record_refill(
        pump,
        services.RefillInput(
            performed_at=implanted_at + timedelta(hours=2),
            withdrawn_ml=Decimal("0"),
            volume_added_ml=Decimal("40"),
            concentration_mcg_per_ml=Decimal("500"),
        ),
        by=None,
        now=NOW,
    )
    return Pump.objects.get(pk=pump.pk)


@pytest.mark.integration
# serialized_rollback: an earlier transactional test's flush removes the pump catalogue
# that a data migration seeds; this restores it first.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_worker_sweep_restores_corrupted_refill_dates(celery_worker_process):
    pump = _pump_with_history()
    assert pump.refill_by is not None and pump.alarm_on is not None
    expected = (pump.alarm_on, pump.refill_by)
    # Committed (transaction=True), so the worker process, with its own connection, sees it.
    Pump.objects.filter(pk=pump.pk).update(alarm_on=date(2000, 1, 1), refill_by=date(2000, 1, 1))

    result = recompute_all_schedules.apply_async(queue=celery_worker_process.queue)

    assert result.get(timeout=30) == 1
    pump.refresh_from_db()
    assert (pump.alarm_on, pump.refill_by) == expected
    assert result.id in celery_worker_process.log_text()  # the separate process ran it


@pytest.mark.django_db
def test_sweep_stores_the_other_pumps_and_then_fails_when_one_pump_cannot_be_recomputed(caplog):
    broken = _pump_with_history("Broken Clinic", "NGP000001H")
    healthy = _pump_with_history("Healthy Clinic", "NGP000002H")
    expected = healthy.refill_by
    Pump.objects.update(refill_by=date(2000, 1, 1))
    # A bad row the sweep must survive: a time zone that no longer exists (saved before
    # validation, or removed from the tz database), so this clinic's dates cannot be computed.
    Clinic.objects.filter(pk=broken.patient.clinic_id).update(time_zone="Atlantis/Capital")
    with pytest.raises(ValidationError):
        Clinic.objects.get(pk=broken.patient.clinic_id).full_clean()

    with pytest.raises(ScheduleSweepFailed, match=rf"1 of 2 pumps failed: \[{broken.pk}\]"):
        recompute_all_schedules()

    healthy.refresh_from_db()
    broken.refresh_from_db()
    assert healthy.refill_by == expected
    assert broken.refill_by == date(2000, 1, 1)  # left as it was, not half-written
    assert f"pump {broken.pk} failed" in caplog.text


# serialized_rollback like the other transactional tests: a plain flush re-creates content
# types, and the next test's serialized rollback would then insert them twice.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_task_after_a_database_restart_gets_a_fresh_connection() -> None:
    """Workers keep their connection across tasks (CELERY_DB_REUSE_MAX); one the server
    dropped (a PostgreSQL restart) is replaced before the next task, not reused to fail."""
    import psycopg
    from django.db import connection

    from pumptrack.celery import drop_unusable_connections

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL to terminate a server connection")
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    drop_unusable_connections()

    assert connection.connection is None
    assert Clinic.objects.filter(name="no such clinic").count() == 0  # a new connection answers
