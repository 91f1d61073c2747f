"""One transport per channel, one small interface, errors that say whether retrying helps.

Email goes through Django's email backends (SMTP in production). SMS goes through a
backend chosen by `PUMPTRACK_SMS_BACKEND`: the console by default, Twilio through its
official library in production (STYLE.md §6, after healthchecks' transports).
"""

from __future__ import annotations

import logging
import re
import smtplib
import sys
from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


class TransportError(Exception):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def without_address(text: str, address: str) -> str:
    """A provider's error text with the recipient's address taken out.

    SMTP servers echo the refused mailbox ("<ann@example.org>: Recipient address rejected")
    and Twilio the refused number; the error travels to attempts, escalations and logs,
    which must carry record ids, never contact details (README "What logs contain").
    """
    if not address:
        return text
    bare = address.lstrip("+")
    for form in {address, bare} - {""}:
        text = re.sub(re.escape(form), "<recipient>", text, flags=re.IGNORECASE)
    return text


@dataclass(frozen=True)
class Outgoing:
    """A rendered message, ready for the wire."""

    message_id: int
    address: str
    subject: str
    text: str
    html: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    status_callback: str = ""


class EmailTransport:
    def send(self, out: Outgoing) -> str:
        """Send one email; returns its Message-ID.

        The Message-ID is stable per outbox row, so a resend after a crash between the
        server's acceptance and our commit is recognisable as the same message.
        """
        message_id = f"<pumptrack-{out.message_id}@{settings.PUMPTRACK_EMAIL_DOMAIN}>"
        email = EmailMultiAlternatives(
            subject=out.subject,
            body=out.text,
            to=[out.address],
            headers={"Message-ID": message_id, **out.headers},
            connection=get_connection(timeout=settings.PUMPTRACK_SEND_TIMEOUT_SECONDS),
        )
        if out.html:
            email.attach_alternative(out.html, "text/html")
        try:
            email.send()
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            # The server's answers, not the mapping: its keys are the patient's address.
            answers = "; ".join(f"{code} {_text(reply)}" for code, reply in exc.recipients.values())
            # 5xx: the mailbox does not exist or refuses us for good (a hard bounce).
            raise TransportError(
                without_address(f"recipient refused: {answers}", out.address), permanent=all(c >= 500 for c in codes)
            ) from exc
        except smtplib.SMTPResponseException as exc:
            # A refused sender, login or message is our configuration's fault, not the
            # patient's address: retried, then escalated, never a blocked contact.
            raise TransportError(without_address(f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}", out.address)) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise TransportError(without_address(f"SMTP unavailable: {exc}", out.address)) from exc
        return message_id


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class SmsBackend:
    def send(self, out: Outgoing) -> str:
        raise NotImplementedError


class ConsoleSmsBackend(SmsBackend):
    """Writes each SMS to standard output: the default, so a fresh checkout can be read."""

    def send(self, out: Outgoing) -> str:
        sys.stdout.write(f"--- SMS to {out.address} (message {out.message_id}) ---\n{out.text}\n---\n")
        sys.stdout.flush()
        return f"console-{out.message_id}"


# Twilio error codes that no retry can fix (twilio.com/docs/api/errors): invalid or
# non-mobile number, recipient unsubscribed (STOP), unreachable country.
TWILIO_PERMANENT_CODES = frozenset({21211, 21214, 21217, 21219, 21401, 21407, 21408, 21421, 21610, 21612, 21614})


def twilio_error_is_permanent(status: int, code: int | None) -> bool:
    """True only when the recipient's number is at fault and no retry can help.

    Any other error (a wrong sender number, an empty or too long body, our account) is
    retried and then escalated, so one bad setting cannot block every patient's number.
    """
    return code in TWILIO_PERMANENT_CODES


class TwilioSmsBackend(SmsBackend):
    def __init__(self) -> None:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        if not (settings.TWILIO_ACCOUNT_SID and settings.TWILIO_AUTH_TOKEN):
            raise TransportError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set", permanent=False)
        self.client = Client(
            settings.TWILIO_ACCOUNT_SID,
            settings.TWILIO_AUTH_TOKEN,
            http_client=TwilioHttpClient(timeout=settings.PUMPTRACK_SEND_TIMEOUT_SECONDS),
        )
        if settings.TWILIO_API_BASE_URL:
            self.client.api.base_url = settings.TWILIO_API_BASE_URL

    def send(self, out: Outgoing) -> str:
        from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException

        options: dict[str, str] = {"to": out.address, "body": out.text}
        if settings.TWILIO_MESSAGING_SERVICE_SID:
            options["messaging_service_sid"] = settings.TWILIO_MESSAGING_SERVICE_SID
        else:
            options["from_"] = settings.TWILIO_FROM_NUMBER
        if out.status_callback:
            options["status_callback"] = out.status_callback
        try:
            created = self.client.messages.create(**options)
        except TwilioRestException as exc:
            permanent = twilio_error_is_permanent(exc.status, exc.code)
            raise TransportError(
                without_address(f"Twilio {exc.status} code {exc.code}: {exc.msg}", out.address), permanent=permanent
            ) from exc
        except TwilioServiceException as exc:  # the RFC 9457 error shape newer Twilio APIs answer with
            permanent = twilio_error_is_permanent(exc.status, exc.code)
            raise TransportError(
                without_address(f"Twilio {exc.status} code {exc.code}: {exc.title}", out.address), permanent=permanent
            ) from exc
        except (TwilioException, OSError) as exc:
            raise TransportError(without_address(f"Twilio unavailable: {exc}", out.address)) from exc
        return str(created.sid)


def sms_backend() -> SmsBackend:
    backend: SmsBackend = import_string(settings.PUMPTRACK_SMS_BACKEND)()
    return backend


def transport_for(channel: str) -> EmailTransport | SmsBackend:
    return EmailTransport() if channel == "email" else sms_backend()
