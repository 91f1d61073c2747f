"""Calendar feeds: issuing, revoking and rotating their signed URLs, and rendering them.

The URL is `/feeds/<token>.ics`, where the token is a `django.core.signing` signature (own
salt, SECRET_KEY and its fallbacks) over the feed's id and nonce. It cannot be forged or
guessed without both the key and the nonce stored in the row; the admin can show it again
because it is recomputed, not stored; revoking the row ends it at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.urls import reverse

from integrations import feeds
from integrations.models import CalendarFeed, PublishedEvent
from patients.history import record_update
from patients.models import Clinic, Patient
from pumps import domain
from pumps.models import Pump, PumpStatus, Refill

SALT = "pumptrack.integrations.calendar-feed"
# "." is not in the signature's URL-safe base64 alphabet nor in the nonce's: the token is
# plain URL characters (a ":" upsets some calendar apps' "webcal://" handling).
SEP = "."
FETCH_NOTE_INTERVAL = timedelta(minutes=1)


def _signer() -> signing.Signer:
    return signing.Signer(salt=SALT, sep=SEP)


# ----------------------------------------------------------------------------- addresses


def feed_token(feed: CalendarFeed) -> str:
    return _signer().sign(f"{feed.pk}{SEP}{feed.nonce}")


def feed_path(feed: CalendarFeed) -> str:
    return reverse("feeds:calendar", kwargs={"token": feed_token(feed)})


def feed_url(feed: CalendarFeed) -> str:
    return settings.SITE_URL.rstrip("/") + feed_path(feed)


def feed_for_token(token: str) -> CalendarFeed | None:
    """The active feed a token names, or None (bad signature, unknown, revoked, moved).

    The signature is checked before the database is asked, so nobody learns which ids exist.
    """
    try:
        value = _signer().unsign(token)
    except signing.BadSignature:
        return None
    pk, _, nonce = value.partition(SEP)
    if not (pk.isascii() and pk.isdigit() and nonce):
        return None
    feed = CalendarFeed.objects.select_related("clinic", "patient").filter(pk=int(pk), nonce=nonce, revoked_at=None).first()
    if feed is None:
        return None
    if feed.patient is not None and feed.patient.clinic_id != feed.clinic_id:
        # The patient moved to another clinic: this clinic's URL must not follow them there.
        return None
    return feed


# ----------------------------------------------------------------------------- issuing


def validate_feed(*, clinic: Clinic, patient: Patient | None, label: str) -> None:
    errors: dict[str, list[str]] = {}
    if patient is not None and patient.clinic_id != clinic.pk:
        errors["patient"] = [f"{patient} is not a patient of {clinic}: choose one of its patients, or none for the staff feed."]
    if not label.strip():
        errors["label"] = ["Say who or what subscribes, so that the feed can be recognised and revoked."]
    if errors:
        raise ValidationError(errors)


def issue_feed(*, clinic: Clinic, patient: Patient | None = None, label: str, by: Any, now: datetime) -> CalendarFeed:
    validate_feed(clinic=clinic, patient=patient, label=label)
    return CalendarFeed.objects.create(clinic=clinic, patient=patient, label=label.strip(), created_by=by, created_at=now)


def revoke_feed(feed: CalendarFeed, *, now: datetime) -> bool:
    """End the URL at once; True if this call revoked it."""
    revoked = CalendarFeed.objects.filter(pk=feed.pk, revoked_at=None).update(revoked_at=now) == 1
    if revoked:
        feed.revoked_at = now
        record_update(CalendarFeed, [feed.pk])  # access taken away: the audit shows who and when
    return revoked


def rotate_feed(feed: CalendarFeed, *, by: Any, now: datetime) -> CalendarFeed:
    """Revoke the feed and issue a new URL for the same subscriber (e.g. a leaked address)."""
    with transaction.atomic():
        if not revoke_feed(feed, now=now):
            raise ValidationError("This feed is already revoked: create a new one instead.")
        return issue_feed(clinic=feed.clinic, patient=feed.patient, label=feed.label, by=by, now=now)


def note_fetch(feed: CalendarFeed, *, now: datetime) -> None:
    """Record that the feed is in use, at most once a minute (clients poll; writes cost)."""
    if feed.last_fetched_at is not None and now - feed.last_fetched_at < FETCH_NOTE_INTERVAL:
        return
    CalendarFeed.objects.filter(pk=feed.pk).filter(
        Q(last_fetched_at=None) | Q(last_fetched_at__lte=now - FETCH_NOTE_INTERVAL)
    ).update(last_fetched_at=now)


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderedFeed:
    body: bytes
    filename: str


def _pump_dates(feed: CalendarFeed) -> list[feeds.PumpDates]:
    """Every active pump the feed covers, in one query whatever their number.

    The stored refill-by date belongs to the last recorded fill (a refill re-stores it), so
    a date in the past is a refill still open: overdue pumps are included, not filtered out.
    """
    last_fill = Refill.objects.filter(pump=OuterRef("pk")).order_by("-performed_at").values("pk")[:1]
    pumps = Pump.objects.filter(patient__clinic=feed.clinic_id, status=PumpStatus.ACTIVE, refill_by__isnull=False)
    if feed.patient_id is not None:
        pumps = pumps.filter(patient=feed.patient_id)
    rows = (
        pumps.annotate(last_fill_id=Subquery(last_fill))
        .order_by("refill_by", "pk")
        .values_list("pk", "last_fill_id", "refill_by", "alarm_on", "patient__given_name", "patient__family_name")
    )
    site = settings.SITE_URL.rstrip("/")
    return [
        feeds.PumpDates(
            pump_id=pk,
            fill_id=fill_id or 0,
            refill_by=refill_by,
            alarm_on=alarm_on,
            given_name=given,
            family_name=family,
            staff_url=site + reverse("admin:pumps_pump_change", args=[pk]),
        )
        for pk, fill_id, refill_by, alarm_on, given, family in rows
        if refill_by is not None  # filtered above; narrows the type
    ]


def publish(drafts: Sequence[feeds.Draft], *, now: datetime) -> dict[str, feeds.Version]:
    """The version of each event: unchanged content keeps its SEQUENCE and stamps; changed
    content gets SEQUENCE + 1 and `now`, once, however many feeds and fetches see it.

    A constant number of queries: one read, and when something changed one insert, one
    locked read and one update.
    """
    wanted = {d.uid: d for d in drafts}
    if not wanted:
        return {}
    known = {e.uid: e for e in PublishedEvent.objects.filter(uid__in=list(wanted))}
    stale = [uid for uid, d in wanted.items() if uid not in known or known[uid].fingerprint != d.fingerprint]
    if stale:
        with transaction.atomic():
            PublishedEvent.objects.bulk_create(
                [
                    PublishedEvent(uid=uid, pump_id=wanted[uid].pump_id, fingerprint=wanted[uid].fingerprint, modified_at=now)
                    for uid in stale
                    if uid not in known
                ],
                ignore_conflicts=True,  # another fetch published it meanwhile: the locked read below sees it
            )
            # Locked in uid order, so two feeds publishing the same events cannot deadlock,
            # and a concurrent fetch waits and then sees the bumped row (no double bump).
            locked = list(PublishedEvent.objects.select_for_update().filter(uid__in=stale).order_by("uid"))
            changed = []
            for event in locked:
                draft = wanted[event.uid]
                if event.fingerprint != draft.fingerprint:
                    event.fingerprint, event.sequence = draft.fingerprint, event.sequence + 1
                    event.modified_at = max(now, event.modified_at)  # stamps never go back
                    changed.append(event)
            PublishedEvent.objects.bulk_update(changed, ["fingerprint", "sequence", "modified_at"])
            known.update({e.uid: e for e in locked})
    return {uid: feeds.Version(known[uid].sequence, known[uid].modified_at) for uid in wanted}


def render_feed(feed: CalendarFeed, *, now: datetime) -> RenderedFeed:
    clinic = feed.clinic
    info = feeds.ClinicInfo(
        name=clinic.name, phone=clinic.phone.as_international if clinic.phone else "", time_zone=clinic.time_zone
    )
    # Overdue is judged on the clinic's calendar day, the day the dates are counted in.
    today = domain.local_date(now, clinic.tz)
    email_domain = settings.PUMPTRACK_EMAIL_DOMAIN
    calendar_uid = f"calendar-feed-{feed.pk}@{email_domain}"
    pumps = _pump_dates(feed)
    if feed.patient is None:
        drafts = feeds.staff_events(pumps, clinic=info, today=today, domain=email_domain)
        calendar = feeds.staff_calendar_info(uid=calendar_uid, clinic=info)
    else:
        language = feed.patient.language
        drafts = feeds.patient_events(pumps, clinic=info, language=language, today=today, domain=email_domain)
        calendar = feeds.patient_calendar_info(uid=calendar_uid, clinic=info, language=language)
    body = feeds.build_calendar(calendar, drafts, publish(drafts, now=now))
    return RenderedFeed(body=body, filename="pump-refills.ics" if feed.patient_id else "itb-refills.ics")
