"""Exactly once, against real parts: concurrent sweeps, a worker SIGKILLed mid-send, a Redis restart.

Every test here runs real `celery worker` processes against the test database, a private
`redis-server` the test owns (never the shared one on 6379) and a real SMTP server on
loopback that counts only what it accepted with a 250 (tests/reliability_support.py).
The crash tests' workers give up a claim after CLAIM_SECONDS (3 s), so what a dead worker
held is sendable again within seconds; the dispatch sweep is what finds it again.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcess, kill_worker, spawn_worker, stop_worker
from django.db import connections
from django.utils import timezone
from factories import ClinicFactory, implanted_pump, screened_patient
from reliability_support import (
    CLAIM_SECONDS,
    GatedSmtpSink,
    RedisServer,
    Tasks,
    log_tails,
    message_id,
    row_of,
    stopped_on_its_own,
    task_outcomes,
    wait_until,
    worker_env,
)

from notifications import services
from notifications.models import Attempt, AttemptOutcome, Channel, Kind, Message, Status

pytestmark = [
    pytest.mark.integration,
    # Workers read and write the rows from their own processes: everything is committed.
    # serialized_rollback: an earlier transactional test's flush removed the pump catalogue.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

IDENTITY = ("recipient_key", "channel", "kind", "subject", "cycle", "stage")
IMPLANT_WARNINGS = {Kind.WITHDRAWAL_WARNING, Kind.HEAT_WARNING, Kind.ALCOHOL_WARNING, Kind.MRI_WARNING}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sink() -> Iterator[GatedSmtpSink]:
    server = GatedSmtpSink()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tasks(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tasks]:
    # Celery reads these variables before any app's own configuration: without this, the
    # client would queue on the shared Redis that the environment names.
    monkeypatch.setenv("CELERY_BROKER_URL", redis_server.url(0))
    monkeypatch.setenv("CELERY_RESULT_BACKEND", redis_server.url(1))
    client = Tasks(redis_server)
    try:
        yield client
    finally:
        client.close()


class Workers:
    """Worker processes on the test's Redis, sending to its SMTP server; teardown stops
    every one a test started (killed ones too)."""

    def __init__(self, directory: Path, redis_server: RedisServer, sink: GatedSmtpSink) -> None:
        self.directory, self.redis_server, self.sink = directory, redis_server, sink
        self.all: list[WorkerProcess] = []
        self.how: dict[Path, tuple[str, int]] = {}

    def spawn(self, name: str, *, queue: str | None = None, claim_seconds: int = CLAIM_SECONDS) -> WorkerProcess:
        env = worker_env(self.redis_server, self.sink, claim_seconds=claim_seconds)
        worker = spawn_worker(self.directory / f"worker-{name}.log", queue=queue, env=env)
        self.all.append(worker)
        self.how[worker.log] = (name, claim_seconds)
        return worker

    def revive(self) -> None:
        """Start again each worker that stopped on its own, as a supervisor does (systemd
        `Restart=always`, docs/deployment.md): see tests/test_faults.py Workers.revive for the
        upstream Celery/kombu race after a Redis restart that can stop a worker."""
        for worker in list(self.all):
            if worker.log not in self.how:
                continue
            if not stopped_on_its_own(worker):
                continue
            kill_worker(worker)
            name, claim_seconds = self.how.pop(worker.log)
            self.spawn(f"{name}-restarted", queue=worker.queue, claim_seconds=claim_seconds)

    def tails(self) -> str:
        return log_tails(self.all)


@pytest.fixture
def workers(tmp_path: Path, redis_server: RedisServer, sink: GatedSmtpSink) -> Iterator[Workers]:
    started = Workers(tmp_path, redis_server, sink)
    try:
        yield started
    finally:
        sink.release()  # a held send answers at once, so a warm stop does not wait on it
        for worker in started.all:  # warm shutdowns in parallel, then wait for each
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in started.all:
            stop_worker(worker)


# --------------------------------------------------------------------------- helpers


def new_pumps(count: int, now: datetime) -> None:
    """`count` patients with an email address (no phone), each with a pump implanted an hour
    ago: each has the four implant safety warnings due now. Their clinic has no quiet hours,
    so the wall clock of the run cannot defer them."""
    clinic = ClinicFactory(quiet_hours_start=clock(0), quiet_hours_end=clock(0))
    implanted_at = now - timedelta(hours=1)
    for i in range(count):
        patient = screened_patient(clinic=clinic, email=f"patient{i}@example.org", screened_at=implanted_at - timedelta(days=14))
        implanted_pump(patient=patient, implanted_at=implanted_at)


def due_rows(now: datetime) -> list[int]:
    return sorted(Message.objects.filter(status=Status.PLANNED, due_at__lte=now).values_list("pk", flat=True))


def at_the_same_moment(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread (its own database connection), released together."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(10)
            results[i] = call()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's connections

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a sweep did not finish within 60 s"
    assert not errors, errors
    return results


def safe_to_kill(sink: GatedSmtpSink, held_before: int) -> bool:
    """A new send is held unanswered, and every message the sink accepted is committed SENT
    (a kill between the sink's 250 and that commit would resend it: see the test)."""
    if len(sink.held_ids()) <= held_before:
        return False
    accepted = [row_of(mid) for mid in sink.accepted_ids()]
    return Message.objects.filter(pk__in=accepted, status=Status.SENT).count() == len(accepted)


def sweep_until_sent(
    tasks: Tasks, queue: str, rows: Sequence[int], workers: Workers, *, timeout: float, supervised: bool = False
) -> None:
    """Queue a dispatch sweep every second until every row in `rows` is sent; `supervised`:
    a worker that stopped on its own is started again (Workers.revive)."""
    last_sweep = [0.0]

    def all_sent() -> bool:
        if not Message.objects.filter(pk__in=rows).exclude(status=Status.SENT).exists():
            return True
        if supervised:
            workers.revive()
        if time.monotonic() - last_sweep[0] >= 1.0:
            tasks.send("dispatch_sweep", queue)
            last_sweep[0] = time.monotonic()
        return False

    wait_until(all_sent, timeout=timeout, what=f"all {len(rows)} due messages sent", workers=workers.all)


def assert_each_sent_exactly_once(sink: GatedSmtpSink, rows: Sequence[int], workers: Workers) -> None:
    arrived = sink.accepted_ids()
    twice = {mid: n for mid, n in arrived.items() if n > 1}
    missing = [pk for pk in rows if message_id(pk) not in arrived]
    assert not twice, f"sent more than once: {twice}\n{workers.tails()}"
    assert not missing, f"never arrived: {missing}\n{workers.tails()}"
    assert set(arrived) == {message_id(pk) for pk in rows}
    assert set(Message.objects.filter(pk__in=rows).values_list("status", flat=True)) == {Status.SENT}


def result_of(result: Any, workers: Workers, timeout: float = 30) -> Any:
    try:
        return result.get(timeout=timeout)
    except Exception as exc:
        pytest.fail(f"task {result.id} gave no result: {exc!r}\n{workers.tails()}")


def outcomes_by_row(rows: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {pk: [] for pk in rows}
    for pk, outcome in (
        Attempt.objects.filter(message_id__in=rows).order_by("started_at", "pk").values_list("message_id", "outcome")
    ):
        found[pk].append(outcome)
    return found


# --------------------------------------------------------------------------- tests


def test_two_planning_sweeps_and_two_dispatch_sweeps_at_once_create_and_send_every_message_once(
    sink: GatedSmtpSink, tasks: Tasks, workers: Workers
) -> None:
    """Planning: two `plan_all` sweeps released together in two threads (two database
    connections). Dispatch: two worker processes each run `dispatch_sweep` at once, then
    every send task is delivered to both processes again."""
    now = timezone.now()
    new_pumps(20, now)
    # What one sweep alone plans, from an empty outbox (the implants already planned
    # in-process when they committed: that outbox is emptied first).
    Message.objects.all().delete()
    services.plan_all(now)
    one_sweep = sorted(Message.objects.values_list(*IDENTITY))
    Message.objects.all().delete()

    first, second = at_the_same_moment([lambda: services.plan_all(now), lambda: services.plan_all(now)])

    planned = sorted(Message.objects.values_list(*IDENTITY))
    assert planned == one_sweep
    # Each identity was inserted by one sweep only: the other waited on the pump locks and
    # found it (not merely skipped by the unique constraint, which would count it twice).
    assert first.created + second.created == len(planned)
    due = due_rows(now)
    assert len(due) == 20 * 4
    assert Counter(Message.objects.filter(pk__in=due).values_list("kind", "channel")) == {
        (kind, Channel.EMAIL): 20 for kind in IMPLANT_WARNINGS
    }

    # The production claim period: no claim expires here, every send is a live race.
    a, b = workers.spawn("a", claim_seconds=300), workers.spawn("b", claim_seconds=300)
    sweeps = [tasks.send("dispatch_sweep", w.queue) for w in (a, b)]
    queued = [result_of(s, workers) for s in sweeps]
    # One sweep queued every due message; the other found them taken.
    assert sorted(queued) == [0, len(due)]
    # And every send task delivered a second time, to the other process, in the sweep's
    # order (a broker redelivering after lost acknowledgements): the two processes race
    # message by message, and the claim lets one of them through.
    other = b if queued[0] else a
    for pk in due:
        tasks.send("send_message", other.queue, [pk])

    expected_runs = len(due) * 2
    wait_until(
        lambda: sum(task_outcomes(workers.all).values()) >= expected_runs,
        timeout=40,
        what=f"{expected_runs} send tasks to finish",
        workers=workers.all,
    )
    assert task_outcomes(workers.all) == {"sent": len(due), "not_claimed": len(due)}, workers.tails()
    assert_each_sent_exactly_once(sink, due, workers)
    assert outcomes_by_row(due) == {pk: [AttemptOutcome.SENT] for pk in due}
    # Both processes sent some: the race was real.
    assert all(task_outcomes([w])["sent"] > 0 for w in (a, b)), workers.tails()
    # Messages not due yet were left alone.
    assert set(Message.objects.exclude(pk__in=due).values_list("status", flat=True)) == {Status.PLANNED}


def test_a_worker_killed_mid_send_then_restarted_sends_every_due_message_exactly_once(
    sink: GatedSmtpSink, tasks: Tasks, workers: Workers
) -> None:
    """Three times, a worker is SIGKILLed while its SMTP conversation is provably open and
    unanswered; a restarted worker and later dispatch sweeps send every due message once.

    Where the kill lands matters. The send is: claim + in-flight Attempt committed, SMTP
    conversation, the server's 250, then our commit of SENT. A kill after the server's 250
    and before our commit cannot be told apart from a kill before the 250: the row stays
    SENDING, its claim expires and it is sent again. No SMTP provider deduplicates, so that
    window gives a duplicate (the stable Message-ID lets a mail client or a human see it is
    one message), never a loss: at-least-once is the only honest promise across it. The
    window is short (the client's QUIT and one small transaction) but no design removes it.

    So the kill is placed where the message is provably *not* accepted: the sink holds the
    DATA command unanswered, the worker is blocked inside the network call, and the sink
    counts a message only after answering 250. Before each kill, every message the sink did
    accept is confirmed SENT in the database, so no kill falls in that window.
    """
    now = timezone.now()
    new_pumps(10, now)
    services.plan_all(now)
    due = due_rows(now)
    assert len(due) == 40
    queue = f"pytest-kill-{uuid.uuid4().hex[:8]}"

    held_per_kill: list[list[str]] = []
    for kill in range(3):
        held_before = len(sink.held_ids())
        sink.hold_after(len(sink.accepted_ids()) + 3)  # three more go through, then every DATA waits
        worker = workers.spawn(f"kill-{kill}", queue=queue)
        if kill == 0:
            tasks.send("dispatch_sweep", queue)  # later workers take the send tasks still queued

        wait_until(
            functools.partial(safe_to_kill, sink, held_before),
            timeout=20,
            what=f"a held send (kill {kill})",
            workers=workers.all,
        )
        kill_worker(worker)
        held_per_kill.append(sink.held_ids()[held_before:])

    # The killed sends stay unaccepted: their clients are gone (aiosmtpd cancels the
    # transaction) or, released now, they are refused.
    sink.release()
    assert not set(sink.accepted_ids()) & {mid for held in held_per_kill for mid in held}
    final = workers.spawn("after-kills", queue=queue)
    sweep_until_sent(tasks, queue, due, workers, timeout=30 + CLAIM_SECONDS)
    stop_worker(final)  # warm: a send still running finishes before the sink is read

    assert_each_sent_exactly_once(sink, due, workers)
    held_rows = [{row_of(mid) for mid in held} for held in held_per_kill]
    assert all(held_rows), held_per_kill
    assert not (held_rows[0] & held_rows[1] or held_rows[1] & held_rows[2] or held_rows[0] & held_rows[2])
    attempts = outcomes_by_row(due)
    killed = {pk for pk, outcomes in attempts.items() if AttemptOutcome.WORKER_LOST in outcomes}
    # Each held send was a killed attempt, recorded before the network call and closed as
    # "worker lost" when the next worker reclaimed the row.
    assert set().union(*held_rows) <= killed
    for pk, outcomes in attempts.items():
        # Any number of attempts lost with a killed worker, then exactly one that sent, last.
        assert outcomes[-1] == AttemptOutcome.SENT and outcomes.count(AttemptOutcome.SENT) == 1, (pk, outcomes)
        assert set(outcomes[:-1]) <= {AttemptOutcome.WORKER_LOST}, (pk, outcomes)
        assert (len(outcomes) > 1) == (pk in killed)
    assert dict(Message.objects.filter(pk__in=killed).values_list("pk", "attempt_count")) == {
        pk: len(attempts[pk]) for pk in killed
    }


def test_redis_restarted_during_dispatch_loses_no_message_and_sends_none_twice(
    redis_server: RedisServer, sink: GatedSmtpSink, tasks: Tasks, workers: Workers
) -> None:
    """Redis (no persistence) restarts while most send tasks are still queued in it: those
    tasks are gone. The worker reconnects, and dispatch sweeps queue the lost messages again
    once their `queued_at` is older than the claim period."""
    now = timezone.now()
    new_pumps(10, now)
    services.plan_all(now)
    due = due_rows(now)
    assert len(due) == 40
    sink.delay = 0.05  # a slow provider: the restart lands while most sends are still queued
    worker = workers.spawn("redis")
    tasks.send("dispatch_sweep", worker.queue)
    wait_until(lambda: len(sink.accepted_ids()) >= 6, timeout=20, what="the first sends", workers=workers.all)

    waiting = redis_server.queue_length(worker.queue)
    redis_server.restart()  # no persistence: every queued send task is gone
    accepted_at_restart = len(sink.accepted_ids())

    assert waiting > 0 and accepted_at_restart < len(due), (waiting, accepted_at_restart)
    assert redis_server.queue_length(worker.queue) == 0
    sweep_until_sent(tasks, worker.queue, due, workers, timeout=40, supervised=True)
    for started in workers.all:
        stop_worker(started)

    assert_each_sent_exactly_once(sink, due, workers)
    assert outcomes_by_row(due) == {pk: [AttemptOutcome.SENT] for pk in due}
