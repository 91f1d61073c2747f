"""The calendar feed URL: thin, anonymous (the signed URL is the credential)."""

from __future__ import annotations

import hashlib

from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseNotFound
from django.utils import timezone
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.http import quote_etag
from django.views.decorators.http import require_safe

from integrations import services

# Clients poll hourly (REFRESH-INTERVAL); a few minutes of caching spares repeated fetches
# without hiding a moved date for long. `private`: the URL is a credential, so no shared cache.
MAX_AGE_SECONDS = 300


def _not_found() -> HttpResponse:
    # The same bare answer for a bad signature, an unknown feed and a revoked one.
    return HttpResponseNotFound(b"Not found\n", content_type="text/plain; charset=utf-8")


def _headers(response: HttpResponseBase, etag: str) -> HttpResponseBase:
    response["ETag"] = etag
    patch_cache_control(response, private=True, max_age=MAX_AGE_SECONDS)
    # A bearer URL must not end up in a search index or another site's referrer logs.
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_safe
def calendar(request: HttpRequest, token: str) -> HttpResponseBase:
    feed = services.feed_for_token(token)
    if feed is None:
        return _not_found()
    now = timezone.now()
    rendered = services.render_feed(feed, now=now)
    services.note_fetch(feed, now=now)
    # The body is deterministic (no "now" stamps), so its digest is a strong validator.
    etag = quote_etag(hashlib.sha256(rendered.body).hexdigest())
    conditional = get_conditional_response(request, etag=etag)
    if conditional is not None:
        return _headers(conditional, etag)
    response = HttpResponse(rendered.body, content_type="text/calendar; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="{rendered.filename}"'
    return _headers(response, etag)
