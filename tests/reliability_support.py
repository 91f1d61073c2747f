"""Real parts for the outbox reliability tests (tests/test_outbox_reliability.py).

- `RedisServer`: a private `redis-server` on its own port that a test may restart (never
  the shared one on 6379).
- `GatedSmtpSink`: an aiosmtpd server that counts only messages it accepted with a 250,
  and can hold every DATA command at a gate, so a test knows the sending worker is inside
  the network call and the message was not accepted.
- `Tasks`: a Celery client for that Redis, to queue the real tasks by name on a worker's queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcess

# Workers that must recover from a crash give up a claim after 3 s (the setting's minimum
# is 2), so a killed worker's message is sendable again within seconds. Every send to the
# loopback sink takes well under a second.
CLAIM_SECONDS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smtp_env(port: int) -> dict[str, str]:
    """A worker's settings for sending by SMTP to a sink on loopback `port`."""
    return {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(port),
        "EMAIL_HOST_USER": "",
        "EMAIL_HOST_PASSWORD": "",
        "EMAIL_USE_TLS": "false",
    }


def stopped_on_its_own(worker: WorkerProcess) -> bool:
    """The worker exited, or Celery gave up on it ("Unrecoverable error") and it is on its
    way out: what a supervisor (systemd `Restart=always`) starts again."""
    return worker.process.poll() is not None or "Unrecoverable error" in worker.log_text()


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, workers: Iterable[WorkerProcess] = (), interval: float = 0.05
) -> Any:
    """Poll `condition` until it is truthy; fail after `timeout` s with the workers' log tails."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{log_tails(workers)}")
        time.sleep(interval)


def log_tails(workers: Iterable[WorkerProcess], lines: int = 40) -> str:
    out = []
    for w in workers:
        text = w.log_text().splitlines() if w.log.exists() else []
        out.append(f"--- {w.log.name} (queue {w.queue}), last {lines} lines ---\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


def task_outcomes(workers: Iterable[WorkerProcess], task: str = "notifications.tasks.send_message") -> collections.Counter[str]:
    """How the workers' runs of `task` ended, from their logs: {'sent': n, 'not_claimed': m, ...}."""
    pattern = re.compile(rf"Task {re.escape(task)}\[[0-9a-f-]+\] succeeded in [0-9.e-]+s: '([a-z_]+)'")
    found: collections.Counter[str] = collections.Counter()
    for w in workers:
        found.update(pattern.findall(w.log_text()))
    return found


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """`redis-server` in the foreground, on one port for its whole life, no persistence:
    a restart loses every queued task, as a crashed broker without AOF would."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("needs redis-server on PATH (apt-get install redis-server)")
        self.binary, self.directory = binary, directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.starts += 1
        log = (self.directory / f"redis-{self.starts}.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: with `--save ''` Redis exits without writing anything down."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def queue_length(self, queue: str) -> int:
        import redis

        client = redis.Redis.from_url(self.url(0))
        try:
            return int(client.llen(queue))
        finally:
            client.close()


# --------------------------------------------------------------------------- SMTP


class GatedSmtpSink:
    """An aiosmtpd handler that counts a message only once it answered its DATA with 250.

    `hold_after(n)`: accept until `n` messages were accepted in all, then hold every
    further DATA command unanswered (the client is left waiting inside its network call)
    until `release()`. A held transaction is never accepted: released, it is answered
    451; if its client dies first, aiosmtpd cancels the handler and nothing is counted.
    `delay` slows each acceptance (a slow provider).
    """

    def __init__(self) -> None:
        self.accepted: list[Any] = []  # EmailMessage objects, in acceptance order
        self.held: list[str] = []  # Message-IDs of held transactions, in order
        self.abandoned: list[str] = []  # held and never accepted (client gone or released)
        self.delay = 0.0
        self._threshold: int | None = None
        self._gate = threading.Event()
        self._lock = threading.Lock()
        self.port = 0
        self._controller: Any = None

    # -- the server
    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        self.release()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def worker_env(self) -> dict[str, str]:
        return smtp_env(self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        message_id = str(msg["Message-ID"])
        with self._lock:
            hold = self._threshold is not None and len(self.accepted) >= self._threshold
            gate = self._gate
            if hold:
                self.held.append(message_id)
        if hold:
            try:
                while not gate.is_set():
                    await asyncio.sleep(0.01)
            finally:  # released, or cancelled because the client's connection was lost
                with self._lock:
                    self.abandoned.append(message_id)
            return "451 4.3.0 Transaction abandoned by the test"
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.accepted.append(msg)
        return "250 Message accepted for delivery"

    # -- the test's controls
    def hold_after(self, accepted: int) -> None:
        with self._lock:
            self._gate = threading.Event()
            self._threshold = accepted

    def release(self) -> None:
        with self._lock:
            self._threshold = None
            self._gate.set()

    def accepted_ids(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(str(m["Message-ID"]) for m in self.accepted)

    def held_ids(self) -> list[str]:
        with self._lock:
            return list(self.held)


def message_id(pk: int) -> str:
    """The stable Message-ID header of outbox row `pk` (notifications.transports.EmailTransport)."""
    from django.conf import settings

    return f"<pumptrack-{pk}@{settings.PUMPTRACK_EMAIL_DOMAIN}>"


def row_of(message_id_header: str) -> int:
    found = re.fullmatch(r"<pumptrack-(\d+)@[^>]+>", message_id_header)
    assert found, message_id_header
    return int(found.group(1))


# --------------------------------------------------------------------------- Celery


class Tasks:
    """Queue the project's real tasks, by name, on a worker's queue in a private Redis."""

    def __init__(self, redis_server: RedisServer) -> None:
        from celery import Celery

        # Not the current app: shared tasks used by later tests must keep the project's broker.
        self.app = Celery(
            "pumptrack-reliability-tests", broker=redis_server.url(0), backend=redis_server.url(1), set_as_current=False
        )
        self.app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
        )

    def send(self, name: str, queue: str, args: Iterable[Any] = ()) -> Any:
        return self.app.send_task(f"notifications.tasks.{name}", args=list(args), queue=queue)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()


def worker_env(redis_server: RedisServer, sink: GatedSmtpSink, *, claim_seconds: int = CLAIM_SECONDS) -> dict[str, str]:
    """Settings for a worker process: this Redis, this SMTP server, this claim period."""
    return {
        "CELERY_BROKER_URL": redis_server.url(0),
        "CELERY_RESULT_BACKEND": redis_server.url(1),
        "PUMPTRACK_MESSAGE_CLAIM_SECONDS": str(claim_seconds),
        **sink.worker_env(),
    }
