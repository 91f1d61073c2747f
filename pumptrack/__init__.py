"""pumptrack project package: settings, Celery app, URLs. Nothing clinical lives here."""

from .celery import app as celery_app

__all__ = ("celery_app",)
