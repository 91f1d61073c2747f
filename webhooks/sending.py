"""The one HTTP POST of a webhook delivery, with an overall deadline, and the address rules.

http.client rather than urllib: no proxy from the environment, no redirect, no scheme but
http(s), and a watchdog that closes the socket when the whole exchange outlives its
deadline (a socket timeout bounds each read only: a receiver trickling one byte at a time
would otherwise hold a worker, and the claim, for as long as it likes).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import threading
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from django.conf import settings

EXCERPT_BYTES = 1000
# What may stay in a URL path and query as it is (RFC 3986 reserved and unreserved).
_URI_SAFE = "/?#[]@!$&'()*+,;=%:-._~"


@dataclass(frozen=True)
class Answer:
    status: int
    excerpt: str
    note: str = ""  # why the answer's body could not be read, when it could not


def clean_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL: a receiver's binary answer must not make the outcome
    unrecordable (the row would be reclaimed and re-sent for ever)."""
    return text.replace("\x00", "\ufffd")


def address_problem(url: str) -> str | None:
    """Why the server must not POST to `url`: the host is (or resolves to) a loopback,
    private, link-local or otherwise internal address (cloud metadata, the database, Redis).
    PUMPTRACK_WEBHOOK_ALLOW_PRIVATE lifts the rule for receivers inside the network."""
    if settings.PUMPTRACK_WEBHOOK_ALLOW_PRIVATE:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return None  # unresolvable now: the delivery fails and retries, and is checked again
        addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    for address in addresses:
        if not address.is_global or address.is_multicast:
            return f"{host} is an internal address ({address}); webhooks go to public receivers only."
    return None


def _target(url: str) -> tuple[type[http.client.HTTPConnection], str, int | None, str]:
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    path = quote(parts.path or "/", safe=_URI_SAFE) + (f"?{quote(parts.query, safe=_URI_SAFE)}" if parts.query else "")
    return connection, parts.hostname or "", parts.port, path


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, deadline: float) -> Answer:
    """POST once; raise OSError or HTTPException when no status came back.

    `timeout` bounds the connect and each read; `deadline` (seconds) the whole exchange.
    Once the status is in, it is the outcome: a body that stalls is a note, not a failure.
    """
    problem = address_problem(url)
    if problem:
        raise ConnectionRefusedError(problem)
    connection_class, host, port, path = _target(url)
    conn = connection_class(host, port, timeout=timeout)
    timed_out = threading.Event()

    def abort() -> None:
        timed_out.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to stop
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(deadline, abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if timed_out.is_set():
                raise TimeoutError(f"no answer within {deadline:g} s") from exc
            raise
        try:
            excerpt = response.read(EXCERPT_BYTES).decode("utf-8", "replace")
            note = ""
        except (OSError, http.client.HTTPException) as exc:
            excerpt = ""
            note = f"answer body not read: {'deadline reached' if timed_out.is_set() else type(exc).__name__}"
        return Answer(int(response.status), clean_text(excerpt), note)
    finally:
        watchdog.cancel()
        conn.close()
