"""System checks for webhook settings that only make sense together (STYLE.md §10)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks


@checks.register()
def claim_outlasts_request(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The timeout bounds each network step (connect, each read), not the whole request. A
    claim shorter than ten timeouts could expire under a request still running; the sweep
    would then send the delivery again while the first request is still being answered."""
    claim, timeout = settings.PUMPTRACK_WEBHOOK_CLAIM_SECONDS, settings.PUMPTRACK_WEBHOOK_TIMEOUT_SECONDS
    if claim < 10 * timeout:
        return [
            checks.Error(
                f"PUMPTRACK_WEBHOOK_CLAIM_SECONDS ({claim}) is shorter than 10 x PUMPTRACK_WEBHOOK_TIMEOUT_SECONDS ({timeout}).",
                hint="Raise the claim period or lower the timeout.",
                id="webhooks.E001",
            )
        ]
    return []
