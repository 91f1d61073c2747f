"""HTTP faces of the notifications app: unsubscribe, Twilio callbacks, health."""

from __future__ import annotations

import logging
from xml.sax.saxutils import escape

from django.conf import settings
from django.core import signing
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from notifications import services
from notifications.models import BlockMethod, BlockReason

logger = logging.getLogger(__name__)


@csrf_exempt  # RFC 8058 one-click: mail providers POST without a CSRF token
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a confirmation button (link scanners must not unsubscribe anyone); POST records it."""
    try:
        channel, address = services.read_unsubscribe_token(token)
    except signing.BadSignature:
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=400)
    done = False
    if request.method == "POST":
        services.block_contact(
            channel, address, reason=BlockReason.OPTED_OUT, method=BlockMethod.UNSUBSCRIBE_LINK, now=timezone.now()
        )
        done = True
    return render(request, "notifications/unsubscribe.html", {"address": address, "done": done, "channel": channel})


def _twilio_signed(request: HttpRequest) -> bool:
    from twilio.request_validator import RequestValidator

    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature or not settings.TWILIO_AUTH_TOKEN:
        return False
    url = settings.SITE_URL.rstrip("/") + request.get_full_path()
    return bool(RequestValidator(settings.TWILIO_AUTH_TOKEN).validate(url, request.POST.dict(), signature))


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    """Twilio's delivery-status callback: moves a sent SMS to delivered or failed."""
    if not _twilio_signed(request):
        return HttpResponseForbidden("invalid X-Twilio-Signature")
    sid = request.POST.get("MessageSid", "")
    status = request.POST.get("MessageStatus", "")
    if not sid or not status:
        return HttpResponseBadRequest("MessageSid and MessageStatus are required")
    services.record_delivery_status(sid, status, request.POST.get("ErrorCode", ""), timezone.now())
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    """Inbound SMS: STOP and friends opt out, START re-subscribes, HELP answers with the clinic's phone."""
    if not _twilio_signed(request):
        return HttpResponseForbidden("invalid X-Twilio-Signature")
    sender = request.POST.get("From", "")
    if not sender:
        return HttpResponseBadRequest("From is required")
    reply = services.handle_inbound_sms(sender, request.POST.get("Body", ""), timezone.now())
    twiml = f"<Response><Message>{escape(reply)}</Message></Response>" if reply else "<Response/>"
    return HttpResponse('<?xml version="1.0" encoding="UTF-8"?>' + twiml, content_type="text/xml")


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """503 when a sweep has not finished within twice its interval (DESIGN.md heartbeat),
    or when the database cannot be read: then no sweep can run or send anything."""
    try:
        problems = services.stale_sweeps(timezone.now())
    except DatabaseError as exc:
        logger.error("healthz: database unavailable: %s", type(exc).__name__)
        problems = [f"database unavailable ({type(exc).__name__}): reminders are neither planned nor sent"]
    return JsonResponse({"ok": not problems, "problems": problems}, status=503 if problems else 200)
