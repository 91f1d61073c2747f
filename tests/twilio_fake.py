"""A local HTTP server that speaks the part of Twilio's REST API pumptrack uses.

Twilio cannot be reached from a test, so this is the one thing we fake (STYLE.md §12): the
official `twilio` library in `notifications.transports.TwilioSmsBackend` talks to it over
real HTTP, with `TWILIO_API_BASE_URL=fake.base_url`. It answers exactly as Twilio does:

- `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with form fields To, From or
  MessagingServiceSid, Body, StatusCallback; HTTP Basic auth with the account SID and auth
  token; 201 with a Message resource (sid "SM" + 32 hex, status "queued").
- Errors in Twilio's JSON shape (`{"code", "message", "more_info", "status"}`), e.g. 21211
  for a number that is not a phone number, or a 500/429 set with `fail(...)`.

It also plays Twilio's side of the webhooks: a status callback or an inbound SMS, signed
with `X-Twilio-Signature` as Twilio signs them, posted to a live server or through
Django's test client.

    with FakeTwilio() as twilio:
        twilio.fail("+442071234567", status=400, code=21211)
        ... worker env TWILIO_API_BASE_URL=twilio.base_url ...
        (sms,) = twilio.wait_for(1)
        twilio.post_status(sms, "delivered", client=client)
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from twilio.request_validator import RequestValidator

API_VERSION = "2010-04-01"
MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")

# Twilio's own texts for the errors this fake produces (twilio.com/docs/api/errors).
ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    21211: "Invalid 'To' Phone Number",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
}


def new_sid(prefix: str) -> str:
    """A Twilio SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def twilio_error(code: int, status: int, message: str | None = None) -> dict[str, Any]:
    return {
        "code": code,
        "message": message or ERROR_MESSAGES.get(code, "Error"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    """The `X-Twilio-Signature` Twilio sends with a webhook to `url` with form `params`."""
    return str(RequestValidator(auth_token).compute_signature(url, params))


def problem_details(code: int, status: int, message: str | None = None) -> dict[str, Any]:
    """The RFC 9457 error shape newer Twilio APIs answer with."""
    return {
        "type": f"https://www.twilio.com/docs/errors/{code}",
        "title": message or ERROR_MESSAGES.get(code, "Error"),
        "status": status,
        "code": code,
        "detail": message or ERROR_MESSAGES.get(code, "Error"),
    }


@dataclass(frozen=True)
class Failure:
    status: int
    code: int
    message: str | None = None
    rfc9457: bool = False

    def payload(self) -> dict[str, Any]:
        return (problem_details if self.rfc9457 else twilio_error)(self.code, self.status, self.message)


@dataclass
class ReceivedRequest:
    """Every request the fake received, accepted or not."""

    method: str
    path: str
    form: dict[str, str]
    authorized: bool
    answered: int


@dataclass
class SentSms:
    """A message the fake accepted (answered 201)."""

    sid: str
    account_sid: str
    to: str
    from_: str
    messaging_service_sid: str
    body: str
    status_callback: str
    date_created: datetime
    form: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._reply(self, 404, twilio_error(20404, 404))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test asserts on `requests` instead


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeTwilio) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class FakeTwilio:
    """Twilio's Messages API on 127.0.0.1 and a free port, in a thread of the test process."""

    def __init__(self, account_sid: str | None = None, auth_token: str | None = None) -> None:
        self.account_sid = account_sid or new_sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.requests: list[ReceivedRequest] = []
        self.messages: list[SentSms] = []
        self._failures: dict[str, tuple[Failure, int | None]] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeTwilio:
        self._server = _Server(self)
        # A short poll interval: `shutdown()` waits for the loop's next poll (0.5 s by default).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-twilio", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What `TWILIO_API_BASE_URL` must be for the twilio library to call this fake."""
        return f"http://127.0.0.1:{self.port}"

    def env(self, from_number: str = "+15005550006") -> dict[str, str]:
        """Settings for a worker process that sends SMS through this fake."""
        return {
            "PUMPTRACK_SMS_BACKEND": "notifications.transports.TwilioSmsBackend",
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_FROM_NUMBER": from_number,
            "TWILIO_API_BASE_URL": self.base_url,
        }

    # ------------------------------------------------------------------ behaviour
    def fail(
        self,
        to: str,
        *,
        status: int = 400,
        code: int = 21211,
        message: str | None = None,
        times: int | None = None,
        rfc9457: bool = False,
    ) -> None:
        """Answer messages to `to` with a Twilio error: 400/21211 (invalid number, permanent)
        by default; `status=500, code=20500` or `status=429, code=20429` for transient ones.
        `times`: fail only that many requests, then accept again. `rfc9457`: in the
        problem-details shape instead of Twilio's classic one."""
        with self._lock:
            self._failures[to] = (Failure(status, code, message, rfc9457), times)

    def sent_to(self, to: str) -> list[SentSms]:
        with self._lock:
            return [m for m in self.messages if m.to == to]

    def requests_to(self, to: str) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.form.get("To") == to]

    def wait_for(self, count: int, *, timeout: float = 15, requests: bool = False) -> list[Any]:
        """Poll until at least `count` messages were accepted (or requests received)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = list(self.requests if requests else self.messages)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    # ------------------------------------------------------------------ webhooks (Twilio -> us)
    def status_params(self, sms: SentSms, status: str, *, error_code: str = "") -> dict[str, str]:
        """The form Twilio posts to a message's StatusCallback."""
        params = {
            "AccountSid": sms.account_sid,
            "ApiVersion": API_VERSION,
            "From": sms.from_,
            "To": sms.to,
            "MessageSid": sms.sid,
            "SmsSid": sms.sid,
            "MessageStatus": status,
            "SmsStatus": status,
        }
        if sms.messaging_service_sid:
            params["MessagingServiceSid"] = sms.messaging_service_sid
        if error_code:
            params["ErrorCode"] = error_code
        return params

    def inbound_params(self, from_: str, body: str, to: str = "+15005550006") -> dict[str, str]:
        """The form Twilio posts to a number's incoming-message webhook."""
        sid = new_sid("SM")
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "MessageSid": sid,
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": "1",
        }

    def signature(self, url: str, params: dict[str, str]) -> str:
        return sign(self.auth_token, url, params)

    def post_webhook(self, url: str, params: dict[str, str], *, client: Any = None, signature: str | None = None) -> Any:
        """POST `params` to `url` as Twilio does, signed unless `signature` is given.

        With `client` (Django's test client) the request goes to the URL's path in-process
        and the response is returned; otherwise over HTTP to a live server, returning
        (status, body).
        """
        sig = self.signature(url, params) if signature is None else signature
        if client is not None:
            parts = urlsplit(url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            return client.post(path, params, HTTP_X_TWILIO_SIGNATURE=sig)
        request = urllib.request.Request(  # noqa: S310 - a test helper posting to our own server
            url,
            data=urlencode(params).encode(),
            headers={"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post_status(self, sms: SentSms, status: str, *, client: Any = None, error_code: str = "") -> Any:
        """Twilio reporting `status` for `sms` to the StatusCallback our app gave it."""
        assert sms.status_callback, f"message {sms.sid} was sent without a StatusCallback"
        return self.post_webhook(sms.status_callback, self.status_params(sms, status, error_code=error_code), client=client)

    # ------------------------------------------------------------------ the server side
    def _authorized(self, handler: BaseHTTPRequestHandler) -> bool:
        header = handler.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(password, self.auth_token)

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Twilio-Request-Id", new_sid("RQ"))
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode()
        form = {key: values[-1] for key, values in parse_qs(raw, keep_blank_values=True).items()}
        path = urlsplit(handler.path).path
        authorized = self._authorized(handler)
        status, payload, sms = self._answer(path, form, authorized)
        with self._lock:
            self.requests.append(ReceivedRequest("POST", path, form, authorized, status))
            if sms is not None:
                self.messages.append(sms)
        self._reply(handler, status, payload)

    def _answer(self, path: str, form: dict[str, str], authorized: bool) -> tuple[int, dict[str, Any], SentSms | None]:
        match = MESSAGES_PATH.match(path)
        if not authorized:
            return 401, twilio_error(20003, 401), None
        if match is None or match["account"] != self.account_sid:
            return 404, twilio_error(20404, 404), None
        to = form.get("To", "")
        if not to:
            return 400, twilio_error(21604, 400), None
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return 400, twilio_error(21603, 400), None
        if not form.get("Body"):
            return 400, twilio_error(21602, 400), None
        failure = self._take_failure(to)
        if failure is not None:
            return failure.status, failure.payload(), None
        if not E164.match(to):
            return 400, twilio_error(21211, 400, f"The 'To' number {to} is not a valid phone number."), None
        now = datetime.now(UTC)
        sms = SentSms(
            sid=new_sid("SM"),
            account_sid=self.account_sid,
            to=to,
            from_=form.get("From", ""),
            messaging_service_sid=form.get("MessagingServiceSid", ""),
            body=form["Body"],
            status_callback=form.get("StatusCallback", ""),
            date_created=now,
            form=form,
        )
        return 201, self._resource(sms), sms

    def _take_failure(self, to: str) -> Failure | None:
        with self._lock:
            entry = self._failures.get(to)
            if entry is None:
                return None
            failure, times = entry
            if times is not None:
                if times <= 1:
                    del self._failures[to]
                else:
                    self._failures[to] = (failure, times - 1)
            return failure

    def _resource(self, sms: SentSms) -> dict[str, Any]:
        """A Message resource as Twilio returns it from a create."""
        uri = f"/{API_VERSION}/Accounts/{sms.account_sid}/Messages/{sms.sid}"
        stamp = format_datetime(sms.date_created)  # RFC 2822, as Twilio writes dates
        gsm = all(ord(c) < 128 for c in sms.body)
        single, multi = (160, 153) if gsm else (70, 67)
        segments = 1 if len(sms.body) <= single else -(-len(sms.body) // multi)
        return {
            "account_sid": sms.account_sid,
            "api_version": API_VERSION,
            "body": sms.body,
            "date_created": stamp,
            "date_sent": None,
            "date_updated": stamp,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sms.from_ or None,
            "messaging_service_sid": sms.messaging_service_sid or None,
            "num_media": "0",
            "num_segments": str(segments),
            "price": None,
            "price_unit": "USD",
            "sid": sms.sid,
            "status": "accepted" if sms.messaging_service_sid else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": sms.to,
            "uri": f"{uri}.json",
        }


def fake_twilio() -> Iterator[FakeTwilio]:
    """Body of a pytest fixture: `fake_twilio = pytest.fixture(twilio_fake.fake_twilio)`."""
    with FakeTwilio() as fake:
        yield fake
