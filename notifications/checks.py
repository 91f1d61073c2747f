"""System checks for message settings that only make sense together (STYLE.md §10)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks


@checks.register()
def claim_outlasts_send(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An SMTP send is several network steps, each allowed the timeout. A claim shorter than
    ten timeouts could expire under a send still running; the dispatch sweep would then
    queue the message again and the patient would get it twice."""
    claim, timeout = settings.PUMPTRACK_MESSAGE_CLAIM_SECONDS, settings.PUMPTRACK_SEND_TIMEOUT_SECONDS
    if claim < 10 * timeout:
        return [
            checks.Error(
                f"PUMPTRACK_MESSAGE_CLAIM_SECONDS ({claim}) is shorter than 10 x PUMPTRACK_SEND_TIMEOUT_SECONDS ({timeout}).",
                hint="Raise the claim period or lower the send timeout.",
                id="notifications.E001",
            )
        ]
    return []
