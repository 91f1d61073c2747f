"""The API documentation renders in a real browser from this server alone (no CDN)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route

pytestmark = [
    pytest.mark.e2e,
    # live_server runs in another thread; like every browser test, restore the seeded rows after.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


def test_the_api_docs_render_with_local_assets_only(page: Page, live_server: Any) -> None:
    own_host = urlsplit(live_server.url).netloc
    elsewhere: list[str] = []

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).netloc in (own_host, ""):
            route.continue_()
        else:  # a CDN request would fail on an offline clinic network: record and refuse it
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(live_server.url + "/api/docs/")
    page.wait_for_selector(".opblock", timeout=20_000)
    assert page.get_by_text("/api/v1/refills/").first.is_visible()
    assert page.get_by_text("pumptrack API").first.is_visible()
    assert elsewhere == []
