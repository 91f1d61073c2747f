"""Template context for the admin: whether the reminder safety net is running."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import SimpleLazyObject

from notifications import services

# What staff lose when each sweep stops (the names are notifications.services.SWEEPS).
CONSEQUENCE = {
    "plan": "Reminders and staff escalations are not being planned",
    "dispatch": "Due reminders and escalation emails are not being sent",
}


def sweep_alerts(now: Any) -> list[str]:
    """One sentence per stale sweep, saying what it means for patients."""
    alerts = []
    for problem in services.stale_sweeps(now):
        name = problem.split(" ", 1)[0]
        alerts.append(f"{CONSEQUENCE.get(name, 'A periodic job is not running')}: {problem}.")
    return alerts


def sweep_health(request: HttpRequest) -> dict[str, Any]:
    """`sweep_alerts` for signed-in staff on admin pages (the banner in admin/base_site.html).

    Lazy: the heartbeat query runs only when a template shows the banner.
    """
    user = getattr(request, "user", None)
    if user is None or not (user.is_active and user.is_staff) or not request.path.startswith(reverse("admin:index")):
        return {}
    return {"sweep_alerts": SimpleLazyObject(lambda: sweep_alerts(timezone.now()))}
