"""Races between a re-plan and a send, with real transactions on PostgreSQL in threads."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection, transaction
from test_outbox import D14_AT, EMAIL, NOW, PHONE, a_pump

from notifications import services
from notifications.models import Channel, Kind, Message, Status
from patients.models import Patient


def _in_thread(target: Any) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_replan_never_reverts_a_message_a_worker_sends_meanwhile() -> None:
    """The planner locks the open rows it read: a worker's claim waits for the re-plan and
    then sends once; without the lock the planner wrote 'due' over 'sent' and the patient got it twice."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL row locks")
    pump = a_pump(phone="")
    services.replan_pumps([pump.pk], NOW)
    at = D14_AT + timedelta(minutes=1)
    services.dispatch_due(at)
    msg = Message.objects.get(pump=pump, channel=Channel.EMAIL, kind=Kind.REFILL_REMINDER, stage="d14", status=Status.DUE)
    # A contact edit: the open row's context changes and a phone adds SMS rows to insert.
    Patient.objects.filter(pk=pump.patient_id).update(given_name="Alexandra", phone=PHONE)
    # Another transaction inserts, uncommitted, one identity the planner is about to insert:
    # it holds the planner between reading the open rows and writing them.
    held, release = threading.Event(), threading.Event()

    def other_planner() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            clone = Message.objects.get(pk=msg.pk)
            clone.pk, clone.channel, clone.address, clone.status = None, Channel.SMS, PHONE, Status.PLANNED
            clone.save()
            held.set()
            release.wait(10)
            raise RuntimeError("roll back")

    outcome: list[str] = []
    other = _in_thread(other_planner)
    assert held.wait(5)
    planner = _in_thread(lambda: services.replan_pumps([pump.pk], at))
    time.sleep(0.5)  # the planner has read (and locked) the open rows and waits on the insert
    worker = _in_thread(lambda: outcome.append(services.send_message(msg.pk, at).outcome))
    time.sleep(0.5)
    release.set()
    for thread in (other, planner, worker):
        thread.join(20)

    msg.refresh_from_db()
    assert outcome == ["sent"]
    assert msg.status == Status.SENT
    later = at + timedelta(minutes=6)  # past the claim period: nothing to queue again
    assert msg.pk not in services.dispatch_due(later)
    assert len([m for m in mail.outbox if m.to == [EMAIL]]) == 1
