"""Real parts for the fault tests (tests/test_faults.py), beside tests/reliability_support.py.

- `PrivatePostgres`: a PostgreSQL cluster of the test's own (initdb into a temporary
  folder, loopback only, its own port), that a test may stop and start again. Stopping the
  shared cluster would break the test process and every other test on it.
- `HeldSmtpSink`: an SMTP server on loopback that counts a message once it answered 250,
  and can hold every DATA command unanswered; a held one is refused (451) or, with
  `release(accept=True)`, accepted, so a test can make the provider accept a message while
  the database is down.
- `HeldTwilio`: the fake Twilio API (tests/twilio_fake.py) with the same gate: a held request
  whose client died was never processed; released, it is answered 503 or accepted.
- `seed(...)`: patients with a pump implanted an hour ago, so the implant safety warnings are
  due now; runnable in another process against another database (`python fault_support.py`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from reliability_support import free_port, smtp_env


def _pg_bin() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH), or $PG_BIN."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
ROOT = Path(__file__).resolve().parent.parent


def deadline_wait(condition: Callable[[], Any], *, timeout: float, what: str, detail: Callable[[], str] = str) -> Any:
    """Poll until truthy; raise AssertionError naming `what` after `timeout` s (never hangs)."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- PostgreSQL


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, no fsync.

    As root the server runs as the `postgres` OS user (PostgreSQL refuses to run as root);
    as anyone else, as that user. `stop()` is `pg_ctl stop -m fast`: every connection is
    cut at once, as a crash or a failover would cut them.
    """

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
        if not self.pg_ctl.exists():
            raise FileNotFoundError(f"PostgreSQL binaries not found in {PG_BIN} (set PG_BIN)")
        self.as_root = os.geteuid() == 0
        # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
        self.directory = Path(tempfile.mkdtemp(prefix="pumptrack-faults-pg-"))
        if self.as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self.data, self.log = self.directory / "data", self.directory / "server.log"
        self.port = free_port()
        self.running = False

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        return subprocess.run(command, cwd="/", capture_output=True, text=True, timeout=timeout, check=True)

    def url(self, database: str = "pumptrack") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create(self) -> None:
        self._run(
            str(self.initdb), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"
        )
        self.start()
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "pumptrack")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(str(self.pg_ctl), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self.running = True

    def stop(self) -> None:
        self._run(str(self.pg_ctl), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.running = False

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop()
        if self.running and (self.data / "postmaster.pid").exists():
            # `-m fast` failed: the postmaster's pid is the first line of its pid file.
            with contextlib.suppress(Exception):
                os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), 9)
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "--- postgres log ---\n" + "\n".join(text[-lines:])

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="pumptrack", connect_timeout=5) as conn:
            return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]


def manage(database_url: str, *args: str, timeout: float = 120) -> str:
    """`manage.py ARGS` in a subprocess against `database_url`; its output, or a failure with it."""
    env = dict(os.environ, DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="pumptrack.settings")
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode:
        raise AssertionError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def seed_elsewhere(database_url: str, patients: int, *, phones: bool) -> list[int]:
    """`seed()` in another process against `database_url`; the due message ids."""
    env = dict(os.environ, DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="pumptrack.settings")
    done = subprocess.run(
        [sys.executable, str(Path(__file__)), str(patients), "phones" if phones else "email"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        raise AssertionError(f"seeding failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


class WebServer:
    """gunicorn serving the project against a given database (for /healthz)."""

    def __init__(self, database_url: str, log: Path) -> None:
        self.port = free_port()
        env = dict(os.environ, DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="pumptrack.settings", DEBUG="false")
        out = log.open("ab")
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "pumptrack.wsgi", "-b", f"127.0.0.1:{self.port}", "-w", "1", "--timeout", "30"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        try:
            deadline_wait(self._up, timeout=30, what="gunicorn to listen", detail=lambda: log.read_text(errors="replace"))
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited {self.process.returncode}:\n{self.log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def get_json(self, path: str) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=15) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                return exc.code, body.decode(errors="replace")

    def stop(self) -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


# --------------------------------------------------------------------------- providers


class _Gate:
    """Hold requests once `threshold` were accepted; release them refused or accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threshold: int | None = None
        self.event = threading.Event()
        self.accept_held = False
        self.held: list[str] = []

    def hold_after(self, accepted: int) -> None:
        with self.lock:
            self.event = threading.Event()
            self.threshold, self.accept_held = accepted, False

    def release(self, *, accept: bool = False) -> None:
        with self.lock:
            self.threshold, self.accept_held = None, accept
            self.event.set()

    def should_hold(self, accepted: int, key: str) -> threading.Event | None:
        with self.lock:
            if self.threshold is None or accepted < self.threshold:
                return None
            self.held.append(key)
            return self.event


class HeldSmtpSink:
    """aiosmtpd on loopback; `accepted` holds Message-IDs answered 250, in order."""

    def __init__(self) -> None:
        self.gate = _Gate()
        self.accepted: list[str] = []
        self.delay = 0.0
        self.port = 0
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        self.gate.release()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def env(self) -> dict[str, str]:
        return smtp_env(self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message_id = str(message_from_bytes(envelope.content, policy=policy.default)["Message-ID"])
        event = self.gate.should_hold(len(self.accepted), message_id)
        if event is not None:
            # The client waits inside its network call; if it dies, aiosmtpd cancels this.
            while not event.is_set():
                await asyncio.sleep(0.01)
            if not self.gate.accept_held:
                return "451 4.3.0 Transaction abandoned by the test"
        elif self.delay:
            await asyncio.sleep(self.delay)
        self.accepted.append(message_id)
        return "250 Message accepted for delivery"

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(list(self.accepted))


def make_held_twilio() -> Any:
    """A FakeTwilio whose message creation can be held (imported late: twilio_fake needs twilio)."""
    from urllib.parse import parse_qs, urlsplit

    from twilio_fake import FakeTwilio, ReceivedRequest, twilio_error

    class HeldTwilio(FakeTwilio):
        def __init__(self) -> None:
            super().__init__()
            self.gate = _Gate()
            self.delay = 0.0

        def _handle(self, handler: Any) -> None:
            length = int(handler.headers.get("Content-Length") or 0)
            raw = handler.rfile.read(length).decode()
            form = {key: values[-1] for key, values in parse_qs(raw, keep_blank_values=True).items()}
            event = self.gate.should_hold(len(self.messages), form.get("To", ""))
            if event is not None:
                # Held before Twilio processes the request: a client that dies meanwhile
                # sent nothing. Released, it is refused (503) unless the test accepts it.
                event.wait(120)
                if not self.gate.accept_held:
                    with contextlib.suppress(OSError):
                        self._reply(handler, 503, twilio_error(20500, 503))
                    return
            elif self.delay:
                time.sleep(self.delay)
            # As FakeTwilio._handle, from the form already read.
            path = urlsplit(handler.path).path
            authorized = self._authorized(handler)
            status, payload, sms = self._answer(path, form, authorized)
            with self._lock:
                self.requests.append(ReceivedRequest("POST", path, form, authorized, status))
                if sms is not None:
                    self.messages.append(sms)
            with contextlib.suppress(OSError):
                self._reply(handler, status, payload)

        def sids(self) -> collections.Counter[str]:
            with self._lock:
                return collections.Counter(m.sid for m in self.messages)

        def bodies(self) -> collections.Counter[tuple[str, str]]:
            with self._lock:
                return collections.Counter((m.to, m.body) for m in self.messages)

    return HeldTwilio()


# --------------------------------------------------------------------------- data


def seed(patients: int, *, phones: bool) -> list[int]:
    """`patients` patients (email, and a phone if `phones`), each with a pump implanted an
    hour ago, planned now: the implant safety warnings are due. Their clinic has no quiet
    hours, so the wall clock of the run cannot defer them. Returns the due message ids."""
    from datetime import time as clock
    from datetime import timedelta

    from django.utils import timezone
    from factories import ClinicFactory, implanted_pump, screened_patient

    from notifications import services
    from notifications.models import Message, Status

    now = timezone.now()
    clinic = ClinicFactory(quiet_hours_start=clock(0), quiet_hours_end=clock(0))
    implanted_at = now - timedelta(hours=1)
    for i in range(patients):
        patient = screened_patient(
            clinic=clinic,
            email=f"fault{i}@example.org",
            phone=f"+4420712{i:05d}" if phones else "",
            contact_by_sms=phones,
            screened_at=implanted_at - timedelta(days=14),
        )
        implanted_pump(patient=patient, implanted_at=implanted_at)
    services.plan_all(now)
    services.beat("plan", now, "seeded")  # /healthz needs both sweeps to have run once
    return sorted(Message.objects.filter(status=Status.PLANNED, due_at__lte=now).values_list("pk", flat=True))


if __name__ == "__main__":
    # python tests/fault_support.py PATIENTS phones|email  (DATABASE_URL names the database)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    print(json.dumps(seed(int(sys.argv[1]), phones=sys.argv[2] == "phones")))
