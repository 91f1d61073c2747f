"""Faults (issue 6): a worker SIGKILLed mid-dispatch three times, Redis restarted, PostgreSQL
stopped for a few seconds during dispatch. Afterwards every due message went out exactly
once (none lost, none twice) and the heartbeat reported the database outage.

Everything is real and on loopback: `celery worker` processes, a private `redis-server`
and, for the database outage, a private PostgreSQL cluster the test creates, migrates,
stops and starts (the shared one on 5432 serves this test process and every other test);
an SMTP server and the fake Twilio API (tests/twilio_fake.py) that can hold a send
unanswered, so a test knows a worker is inside its network call.

What "exactly once" can mean (DESIGN.md "Messages", STYLE.md §7): a send is claim + in-flight
attempt committed, the network call, the provider's acceptance, then our commit of SENT. A
worker killed *after* the provider accepted and *before* our commit cannot be told from one
killed before: its claim expires and the message goes again, with the same Message-ID. No
SMTP server, and not Twilio's Messages API, deduplicates, so across that window (the QUIT
round trip and one small commit, milliseconds) the honest promise is at-least-once: a
missed refill reminder can kill, a duplicate cannot. The kills here land where the send is
provably not accepted (held unanswered at the provider, every accepted one already SENT),
and the test proves that nothing is lost and nothing sent twice there. The database outage
is different: it can last seconds, and a send the provider accepted during it must not go
twice; `services.send_message` now waits the outage out while its claim holds, and the
database test makes the provider accept sends while PostgreSQL is down.
"""

from __future__ import annotations

import collections
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcess, kill_worker, spawn_worker, stop_worker
from fault_support import (
    HeldSmtpSink,
    PrivatePostgres,
    WebServer,
    make_held_twilio,
    manage,
    seed,
    seed_elsewhere,
)
from reliability_support import RedisServer, Tasks, log_tails, message_id, row_of, stopped_on_its_own, wait_until

from notifications.models import Attempt, AttemptOutcome, Message, Status
from notifications.tasks import OUTAGE_RETRY_SECONDS

pytestmark = [pytest.mark.integration]
# Tests whose workers use the pytest test database: rows must be committed to be seen.
# serialized_rollback: an earlier transactional test's flush removed the pump catalogue.
on_test_database = pytest.mark.django_db(transaction=True, serialized_rollback=True)

# A dead worker's claim expires after this, so the killed sends are sendable again quickly.
CLAIM_SECONDS = 3
# Open while the database is down: the retried SENT commit outlives a few-second outage.
OUTAGE_CLAIM_SECONDS = 12
UNSETTLED = (Status.DUE, Status.SENDING, Status.FAILED)


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
def sink() -> Iterator[HeldSmtpSink]:
    server = HeldSmtpSink()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def twilio() -> Iterator[Any]:
    fake = make_held_twilio()
    fake.start()
    try:
        yield fake
    finally:
        fake.gate.release()
        fake.stop()


@pytest.fixture
def tasks(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tasks]:
    # Celery reads these before any app's own configuration: the client must queue on the
    # private Redis, not the shared one the environment names.
    monkeypatch.setenv("CELERY_BROKER_URL", redis_server.url(0))
    monkeypatch.setenv("CELERY_RESULT_BACKEND", redis_server.url(1))
    client = Tasks(redis_server)
    try:
        yield client
    finally:
        client.close()


class Workers:
    """Worker processes on the private Redis, sending to the sink and the fake Twilio;
    teardown stops every one the test started (killed ones too)."""

    def __init__(self, directory: Path, redis_server: RedisServer, sink: HeldSmtpSink, twilio: Any) -> None:
        self.directory, self.redis_server, self.sink, self.twilio = directory, redis_server, sink, twilio
        self.all: list[WorkerProcess] = []
        self.how: dict[Path, tuple[str, str, dict[str, Any]]] = {}

    def spawn(
        self,
        name: str,
        queue: str,
        *,
        claim_seconds: int = CLAIM_SECONDS,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
    ) -> WorkerProcess:
        settings = {
            "CELERY_BROKER_URL": self.redis_server.url(0),
            "CELERY_RESULT_BACKEND": self.redis_server.url(1),
            "PUMPTRACK_MESSAGE_CLAIM_SECONDS": str(claim_seconds),
            "PUMPTRACK_SEND_TIMEOUT_SECONDS": "1",  # loopback answers at once unless held
            **self.sink.env(),
            **self.twilio.env(),
            **(env or {}),
        }
        worker = spawn_worker(self.directory / f"worker-{name}.log", queue=queue, env=settings, concurrency=concurrency)
        self.all.append(worker)
        self.how[worker.log] = (name, queue, {"claim_seconds": claim_seconds, "env": env, "concurrency": concurrency})
        return worker

    def revive(self) -> None:
        """Start again each worker that stopped on its own, as the deployment's supervisor does
        (systemd `Restart=always`, docs/deployment.md). Celery 5.7 with kombu's Redis transport
        can stop a worker with "Unrecoverable error: AttributeError(...'hostname')" when a task
        finishes while the lost broker connection is being torn down: an upstream race that a
        supervised worker survives, and that the outbox must (nothing lost, nothing twice)."""
        for worker in list(self.all):
            if worker.log not in self.how:
                continue
            if not stopped_on_its_own(worker):
                continue
            kill_worker(worker)  # what is left of it, as the supervisor's stop timeout would
            name, queue, options = self.how.pop(worker.log)
            self.spawn(f"{name}-restarted", queue, **options)

    def tails(self) -> str:
        return log_tails(self.all)


@pytest.fixture
def workers(tmp_path: Path, redis_server: RedisServer, sink: HeldSmtpSink, twilio: Any) -> Iterator[Workers]:
    started = Workers(tmp_path, redis_server, sink, twilio)
    try:
        yield started
    finally:
        sink.gate.release()  # held sends answer at once, so warm stops do not wait on them
        twilio.gate.release()
        for worker in started.all:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in started.all:
            stop_worker(worker)


# --------------------------------------------------------------------------- the rows


Row = tuple[int, str, str, str, str, str]  # pk, channel, status, status_reason, provider_id, address


def orm_rows(ids: Sequence[int]) -> list[Row]:
    return list(
        Message.objects.filter(pk__in=ids)
        .order_by("pk")
        .values_list("pk", "channel", "status", "status_reason", "provider_id", "address")
    )


def settled(rows: Sequence[Row]) -> bool:
    """Every row sent, or deferred by the one-SMS-a-day cap (DESIGN.md): none in flight."""
    return all(
        status == Status.SENT or (status == Status.PLANNED and reason.startswith("Deferred"))
        for _, _, status, reason, _, _ in rows
    )


def sweep_until_settled(
    tasks: Tasks, queue: str, rows: Callable[[], list[Row]], workers: Workers, *, timeout: float, supervised: bool = False
) -> None:
    """Queue a dispatch sweep every second (as beat does every minute) until all settled;
    `supervised`: a worker that stopped on its own is started again (Workers.revive)."""
    last = [0.0]

    def done() -> bool:
        if settled(rows()):
            return True
        if supervised:
            workers.revive()
        if time.monotonic() - last[0] >= 1.0:
            tasks.send("dispatch_sweep", queue)
            last[0] = time.monotonic()
        return False

    wait_until(done, timeout=timeout, what="every due message sent (or deferred by the SMS cap)", workers=workers.all)


def assert_exactly_once(rows: Sequence[Row], sink: HeldSmtpSink, twilio: Any, tails: str) -> None:
    """At the SMTP server each due email's Message-ID once and nothing else; at Twilio each
    sent SMS once (its SID recorded on its row), one per patient a day, nothing else."""
    emails = [r for r in rows if r[1] == "email"]
    texts = [r for r in rows if r[1] == "sms"]
    arrived = sink.counts()
    twice = {mid: n for mid, n in arrived.items() if n > 1}
    assert not twice, f"emails sent more than once: {twice}\n{tails}"
    missing = [pk for pk, *_ in emails if message_id(pk) not in arrived]
    assert not missing, f"emails never sent: {missing}\n{tails}"
    assert set(arrived) == {message_id(pk) for pk, *_ in emails}
    assert {r[2] for r in emails} <= {Status.SENT}, collections.Counter(r[2] for r in emails)

    sids = twilio.sids()
    assert all(n == 1 for n in twilio.bodies().values()), f"an SMS sent twice: {twilio.bodies()}\n{tails}"
    sent = [r for r in texts if r[2] == Status.SENT]
    assert sorted(r[4] for r in sent) == sorted(sids), f"SMS rows and Twilio disagree\n{tails}"
    # The cap: the first SMS of each patient went, the others wait for tomorrow.
    assert collections.Counter(r[5] for r in sent) == dict.fromkeys({r[5] for r in texts}, 1)


def outcomes_by_row(ids: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {pk: [] for pk in ids}
    for pk, outcome in (
        Attempt.objects.filter(message_id__in=ids).order_by("started_at", "pk").values_list("message_id", "outcome")
    ):
        found[pk].append(outcome)
    return found


# --------------------------------------------------------------------------- worker SIGKILL


@on_test_database
def test_a_worker_sigkilled_mid_dispatch_three_times_sends_every_due_email_and_sms_exactly_once(
    sink: HeldSmtpSink, twilio: Any, tasks: Tasks, workers: Workers
) -> None:
    """Three workers in turn are SIGKILLed (the whole process group) while both pool
    processes are inside a send the provider holds unanswered; the rows stay SENDING. A
    fourth worker and the dispatch sweeps send everything once their claims expire."""
    due = seed(8, phones=True)
    assert len(due) == 8 * 8  # four implant warnings, by email and by SMS, per patient
    queue = f"faults-kill-{uuid.uuid4().hex[:8]}"
    held_at_kill: list[tuple[list[str], list[str]]] = []
    # Which provider holds its sends at each kill (how many more it accepts first; None: it
    # answers at once): SMS first, then email, then both, so each channel is cut mid-send.
    for kill, (more_emails, more_sms) in enumerate([(None, 1), (2, None), (1, 1)]):
        held_email, held_sms = len(sink.gate.held), len(twilio.gate.held)
        sink.gate.release()
        twilio.gate.release()
        if more_emails is not None:
            sink.gate.hold_after(len(sink.accepted) + more_emails)
        if more_sms is not None:
            twilio.gate.hold_after(len(twilio.messages) + more_sms)
        worker = workers.spawn(f"kill-{kill}", queue)
        tasks.send("dispatch_sweep", queue)  # re-queues what the last kill stranded, once its claim expired

        def both_slots_held(held_email: int = held_email, held_sms: int = held_sms) -> bool:
            # Both pool processes blocked at a provider, and everything the providers did
            # accept is committed SENT (so no kill lands between acceptance and commit).
            if len(sink.gate.held) - held_email + len(twilio.gate.held) - held_sms < 2:
                return False
            accepted = [row_of(mid) for mid in sink.counts()]
            sent_emails = Message.objects.filter(pk__in=accepted, status=Status.SENT).count()
            sent_sms = Message.objects.filter(provider_id__in=list(twilio.sids()), status=Status.SENT).count()
            return sent_emails == len(accepted) and sent_sms == len(twilio.sids())

        wait_until(
            both_slots_held, timeout=30 + CLAIM_SECONDS, what=f"two sends held mid-flight (kill {kill})", workers=workers.all
        )
        in_flight = Message.objects.filter(pk__in=due, status=Status.SENDING).count()
        assert in_flight >= 2, workers.tails()
        kill_worker(worker)
        held_at_kill.append((sink.gate.held[held_email:], twilio.gate.held[held_sms:]))

    # The killed sends were never accepted: their clients are gone, and released now they are refused.
    sink.gate.release()
    twilio.gate.release()
    final = workers.spawn("after-kills", queue)
    sweep_until_settled(tasks, queue, lambda: orm_rows(due), workers, timeout=60 + CLAIM_SECONDS)
    stop_worker(final)  # warm: a send still running finishes before the providers are read

    assert_exactly_once(orm_rows(due), sink, twilio, workers.tails())
    held_emails = {row_of(mid) for emails, _ in held_at_kill for mid in emails}
    held_phones = {to for _, phones in held_at_kill for to in phones}
    assert held_emails and held_phones, held_at_kill  # both channels were cut mid-send
    attempts = outcomes_by_row(due)
    lost = {pk for pk, outcomes in attempts.items() if AttemptOutcome.WORKER_LOST in outcomes}
    assert held_emails <= lost
    assert held_phones <= set(Message.objects.filter(pk__in=lost, channel="sms").values_list("address", flat=True))
    for pk, outcomes in attempts.items():
        # Attempts lost with a killed worker, then one that ended it (sent, or deferred by the cap).
        assert set(outcomes[:-1]) <= {AttemptOutcome.WORKER_LOST}, (pk, outcomes)
        assert outcomes.count(AttemptOutcome.SENT) <= 1, (pk, outcomes)


# --------------------------------------------------------------------------- Redis restart


@on_test_database
def test_redis_restarted_mid_dispatch_loses_no_message_and_sends_none_twice(
    redis_server: RedisServer, sink: HeldSmtpSink, twilio: Any, tasks: Tasks, workers: Workers
) -> None:
    """Redis, without persistence, restarts while most send tasks are queued in it: they are
    gone. The worker reconnects; the sweeps queue the lost messages again once their
    `queued_at` is older than the claim period."""
    due = seed(8, phones=True)
    sink.delay = twilio.delay = 0.1  # a slow provider: most sends are still queued at the restart
    queue = f"faults-redis-{uuid.uuid4().hex[:8]}"
    workers.spawn("redis", queue)
    tasks.send("dispatch_sweep", queue)
    wait_until(lambda: len(sink.accepted) + len(twilio.messages) >= 4, timeout=30, what="the first sends", workers=workers.all)

    waiting = redis_server.queue_length(queue)
    redis_server.restart()
    assert waiting > 0, "every send task was taken before the restart: nothing was lost"
    assert redis_server.queue_length(queue) == 0
    assert not settled(orm_rows(due))
    sweep_until_settled(tasks, queue, lambda: orm_rows(due), workers, timeout=60 + CLAIM_SECONDS, supervised=True)
    for worker in workers.all:
        stop_worker(worker)

    assert_exactly_once(orm_rows(due), sink, twilio, workers.tails())
    for pk, outcomes in outcomes_by_row(due).items():
        assert AttemptOutcome.WORKER_LOST not in outcomes and outcomes.count(AttemptOutcome.SENT) <= 1, (pk, outcomes)


# --------------------------------------------------------------------------- PostgreSQL outage


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    try:
        cluster = PrivatePostgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.destroy()


def heartbeat(pg: PrivatePostgres, name: str) -> tuple[bool, str] | None:
    found = pg.query("SELECT ok, detail FROM notifications_heartbeat WHERE name = %s", (name,))
    return (bool(found[0][0]), str(found[0][1])) if found else None


def pg_rows(pg: PrivatePostgres, ids: Sequence[int]) -> list[Row]:
    return [
        tuple(r)  # type: ignore[misc]
        for r in pg.query(
            "SELECT id, channel, status, status_reason, provider_id, address FROM notifications_message WHERE id = ANY(%s) ORDER BY id",
            (list(ids),),
        )
    ]


def test_postgresql_stopped_during_dispatch_loses_no_message_sends_none_twice_and_the_heartbeat_reports_it(
    private_postgres: PrivatePostgres, sink: HeldSmtpSink, twilio: Any, tasks: Tasks, workers: Workers, tmp_path: Path
) -> None:
    """A private cluster, migrated and seeded by subprocesses. Two sends are held at the SMTP
    server; PostgreSQL stops (`-m fast`: every connection cut); the server then accepts
    those two, so their workers hold sent messages they cannot write down; a dispatch and a
    planning sweep run into the outage. Four seconds later PostgreSQL starts again."""
    pg = private_postgres
    manage(pg.url(), "migrate", "-v0")
    due = seed_elsewhere(pg.url(), 5, phones=False)
    assert len(due) == 5 * 4
    web = WebServer(pg.url(), tmp_path / "gunicorn.log")
    try:
        # Two queues, as deployed: sends on one worker, sweeps on another, so a sweep can run
        # into the outage while both send processes are busy with the held sends.
        sends, sweeps = f"faults-pg-send-{uuid.uuid4().hex[:8]}", f"faults-pg-sweep-{uuid.uuid4().hex[:8]}"
        on_pg = {"DATABASE_URL": pg.url()}
        sink.gate.hold_after(3)
        workers.spawn("pg-send", sends, claim_seconds=OUTAGE_CLAIM_SECONDS, env=on_pg)
        sweeper = workers.spawn(
            "pg-sweep",
            sweeps,
            claim_seconds=OUTAGE_CLAIM_SECONDS,
            env={**on_pg, "CELERY_TASK_DEFAULT_QUEUE": sends},
            concurrency=1,
        )
        tasks.send("dispatch_sweep", sweeps)
        wait_until(
            lambda: len(sink.gate.held) == 2, timeout=30, what="both send processes held at the SMTP server", workers=workers.all
        )
        accepted = [row_of(mid) for mid in sink.counts()]
        assert len(accepted) == 3
        wait_until(
            lambda: {r[2] for r in pg_rows(pg, accepted)} == {Status.SENT},
            timeout=10,
            what="the accepted sends committed",
            workers=workers.all,
        )
        held = [row_of(mid) for mid in sink.gate.held]
        assert {r[2] for r in pg_rows(pg, held)} == {Status.SENDING}

        outage_started = time.monotonic()
        pg.stop()
        # During the outage /healthz says the database is down, by name, not a 500.
        status, body = web.get_json("/healthz")
        assert status == 503 and "database unavailable" in " ".join(body["problems"]), (status, body)
        sink.gate.release(accept=True)  # the provider accepts what the workers were sending
        wait_until(lambda: len(sink.accepted) == 5, timeout=10, what="the held sends accepted", workers=workers.all)
        tasks.send("dispatch_sweep", sweeps)  # sweeps that run into the outage
        tasks.send("plan_sweep", sweeps)
        wait_until(
            lambda: sweeper.log_text().count(f"Retry in {OUTAGE_RETRY_SECONDS}s") >= 2,
            timeout=15,
            what="both sweeps to fail on the database and retry",
            workers=workers.all,
        )
        time.sleep(max(0.0, 4 - (time.monotonic() - outage_started)))
        pg.start()
        outage = time.monotonic() - outage_started

        # The heartbeat reports the outage once the database is back: the retried sweeps
        # record a failed beat naming it, and /healthz and the admin banner show it.
        for name in ("dispatch", "plan"):
            wait_until(
                lambda name=name: (beat := heartbeat(pg, name)) is not None and not beat[0] and "database unavailable" in beat[1],
                timeout=15,
                what=f"the {name} heartbeat to record the outage",
                workers=workers.all,
            )
        status, body = web.get_json("/healthz")
        assert status == 503, (status, body)
        assert any(p.startswith("dispatch sweep failed") and "database unavailable" in p for p in body["problems"]), body
        sweep_until_settled(tasks, sweeps, lambda: pg_rows(pg, due), workers, timeout=60 + OUTAGE_CLAIM_SECONDS)
        # The next sweeps after recovery clear the alarm (beat runs them every minute / 15 minutes).
        for name in ("dispatch_sweep", "plan_sweep"):
            tasks.send(name, sweeps).get(timeout=60)
        assert heartbeat(pg, "dispatch") == (True, "queued 0")
        assert web.get_json("/healthz") == (200, {"ok": True, "problems": []})
        for worker in workers.all:
            stop_worker(worker)
        assert_exactly_once(pg_rows(pg, due), sink, twilio, workers.tails())
        # The sends accepted during the outage were written down by the workers that sent
        # them (one attempt each), not left SENDING for their claims to expire and go again.
        assert {r[2] for r in pg_rows(pg, held)} == {Status.SENT}
        lost = pg.query(
            "SELECT count(*) FROM notifications_attempt WHERE message_id = ANY(%s) AND outcome = %s",
            (due, AttemptOutcome.WORKER_LOST.value),
        )
        assert lost == [(0,)]
        assert outage >= 4
    finally:
        web.stop()
