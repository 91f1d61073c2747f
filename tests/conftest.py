"""Shared fixtures: Debian's chromium for Playwright, free ports, an SMTP sink on loopback,
and a real Celery worker process on its own queue (../shared/reference/toolchain.md §4)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

# Playwright's sync API keeps an asyncio loop running in the main thread; without this,
# every ORM call made after the first browser test raises SynchronousOnlyOperation, and
# pytest-django runs the transactional (live_server) tests last, so the failure cascades.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port()


# ---------------------------------------------------------------------------- serialized rollback
@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's test database, with `serialized_rollback` that survives Playwright.

    `django_db(transaction=True, serialized_rollback=True)` restores rows that data
    migrations seed (the pump catalogue) after an earlier transactional test's flush. Django
    keeps those rows on the connection object (`_test_serialized_contents`). But once
    Playwright's sync API has started, an asyncio loop runs in the main thread, so
    asgiref's thread-critical Local serves *new* connection objects from context-local
    storage, and those lack the attribute. Every later serialized rollback would then
    silently restore nothing. Observed: a browser test followed by a transactional test
    gives PumpModel.DoesNotExist. So every connection created from now on gets the
    attribute too.
    """
    from django.db import connections

    contents = {
        conn.alias: conn._test_serialized_contents
        for conn in connections.all(initialized_only=True)
        if hasattr(conn, "_test_serialized_contents")
    }
    original = connections.create_connection

    def create_connection(alias: str) -> Any:
        conn = original(alias)
        if alias in contents:
            conn._test_serialized_contents = contents[alias]
        return conn

    connections.create_connection = create_connection  # type: ignore[method-assign]
    try:
        yield
    finally:
        del connections.create_connection  # back to the class's method


# ---------------------------------------------------------------------------- Playwright
# pytest-playwright has no executable-path option and Playwright's own browser download cannot download
# here: overriding its session fixture is the only way to use Debian's chromium.
@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
        ],
    }


# ---------------------------------------------------------------------------- SMTP sink
@dataclass
class SentMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class SmtpSink:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[SentMail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(SentMail(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_sink(settings: Any) -> Iterator[SmtpSink]:
    """A real SMTP server on loopback; Django's SMTP backend is pointed at it."""
    from aiosmtpd.controller import Controller

    handler = SmtpSink()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD, settings.EMAIL_USE_TLS = "", "", False
    try:
        yield handler
    finally:
        controller.stop()


# ---------------------------------------------------------------------------- Celery worker
@dataclass
class WorkerProcess:
    """A `celery -A pumptrack worker` subprocess consuming `queue` (and any `also` queues)."""

    queue: str
    log: Path
    process: subprocess.Popen[bytes]
    node: str = ""  # its node name before the "@host" (`-n`): what its message attempts record

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _database_url(db: dict[str, Any]) -> str:
    user, password = quote(str(db["USER"]), safe=""), quote(str(db["PASSWORD"]), safe="")
    return f"postgres://{user}:{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{quote(str(db['NAME']), safe='')}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown, then the whole process group (prefork children included)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def worker_requirements() -> dict[str, Any]:
    """The test database settings, or a skip naming what is missing for a worker process."""
    from django.conf import settings

    broker = str(settings.CELERY_BROKER_URL)
    if not broker.startswith(("redis://", "rediss://")):
        pytest.skip(
            f"needs a Redis broker: CELERY_BROKER_URL={broker!r} (run `bash .ci/run`, or export CELERY_BROKER_URL=redis://...)"
        )
    if not settings.CELERY_RESULT_BACKEND:
        pytest.skip("needs a result backend to read task results: export CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/1")
    db: dict[str, Any] = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        # A SQLite test database lives in memory in this process: another process cannot see it.
        pytest.skip(f"needs PostgreSQL for a worker in another process, not {db['ENGINE']} (export DATABASE_URL=postgres://...)")
    return db


def spawn_worker(
    log: Path,
    *,
    queue: str | None = None,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    also: Sequence[str] = (),
    name: str | None = None,
) -> WorkerProcess:
    """Start `celery -A pumptrack worker` on its own queue against the test database; wait until ready.

    `env` overrides settings for that process (e.g. EMAIL_PORT of an SMTP sink). `also`: more
    queues it consumes besides `queue` (its default queue); `name` starts its node name
    (default: the queue's). The caller stops it with `stop_worker` (warm) or `kill_worker`
    (SIGKILL, as a crash would).
    """
    db = worker_requirements()
    # Own queue and hostname: a dev worker or a stale one on the same Redis would otherwise
    # take the tests' tasks (toolchain.md §6 #9).
    queue = queue or f"pytest-{uuid.uuid4().hex[:8]}"
    node = f"{name or queue}-{uuid.uuid4().hex[:4]}"
    full_env = dict(
        os.environ,
        DATABASE_URL=_database_url(db),
        DJANGO_SETTINGS_MODULE="pumptrack.settings",
        PYTHONUNBUFFERED="1",
        # Tasks the worker queues itself (a dispatch sweep's sends) stay on its queue.
        CELERY_TASK_DEFAULT_QUEUE=queue,
        # The tests' webhook receivers listen on loopback.
        PUMPTRACK_WEBHOOK_ALLOW_PRIVATE="true",
    )
    full_env.update(env or {})  # may name another database (tests/test_faults.py)
    out = log.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "pumptrack", "worker",
            "-Q", ",".join([queue, *also]), "--pool=prefork", f"--concurrency={concurrency}",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
            "--loglevel=INFO", f"--hostname={node}@%h",
        ],
        cwd=ROOT,
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so teardown reaches every child
    )  # fmt: skip
    out.close()
    worker = WorkerProcess(queue=queue, log=log, process=proc, node=node)
    already = worker.log_text().count(" ready.")
    deadline = time.monotonic() + 60
    while worker.log_text().count(" ready.") <= already:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"celery worker did not start (exit {proc.poll()}):\n{worker.log_text()}")
        time.sleep(0.1)
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    _stop(worker.process)


def kill_worker(worker: WorkerProcess) -> None:
    """SIGKILL the whole worker (main process and pool children), as a crash or OOM would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A real worker process on its own queue, against the test database and Redis.

    Depends on `django_db_setup` so that settings.DATABASES names the test database.
    Tasks reach it with `task.apply_async(queue=worker.queue)`; the rows they read must be
    committed, so tests that use it need `django_db(transaction=True)`.
    """
    worker = spawn_worker(tmp_path_factory.mktemp("celery") / "worker.log")
    try:
        yield worker
    finally:
        stop_worker(worker)


@pytest.fixture(autouse=True)
def _loopback_receivers(settings: Any) -> None:
    """Webhook receivers in tests listen on 127.0.0.1, which production refuses (SSRF)."""
    settings.PUMPTRACK_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Throttle counters live in the cache; under a frozen clock they would carry over."""
    from django.core.cache import cache

    cache.clear()


# ---------------------------------------------------------------------------- admin tests
# Shared by tests/test_admin.py and tests/test_review_fixes.py (helpers: admin_support.py).


@pytest.fixture
def frozen_clock() -> Iterator[None]:
    """The admin reads `timezone.now()`: freeze it at the visit's NOW."""
    import time_machine
    from admin_support import NOW

    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def clinic_a() -> Any:
    from factories import ClinicFactory

    return ClinicFactory(name="Clinic A")


@pytest.fixture
def clinic_b() -> Any:
    from factories import ClinicFactory

    return ClinicFactory(name="Clinic B")


@pytest.fixture
def pump_a(clinic_a: Any) -> Any:
    """Worked example: 40 mL filled full at 500 mcg/mL, 200 mcg/day (0.4 mL/day)."""
    from factories import implanted_pump, screened_patient

    return implanted_pump(patient=screened_patient(clinic=clinic_a))


@pytest.fixture
def pump_b(clinic_b: Any) -> Any:
    from factories import implanted_pump, screened_patient

    return implanted_pump(patient=screened_patient(clinic=clinic_b))
