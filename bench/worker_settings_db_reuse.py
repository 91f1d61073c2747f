"""Worker-only settings to measure one change: keep database connections across tasks.

Celery's Django fixup closes every database connection before and after each task unless
`CELERY_DB_REUSE_MAX` is set (celery/fixups/django.py, `close_database`), whatever
CONN_MAX_AGE says, so each task pays a new PostgreSQL connection (SCRAM authentication
included). Used by `bench/reminders.py --worker --worker-settings bench.worker_settings_db_reuse`.
"""

from pumptrack.settings import *  # noqa: F403

CELERY_DB_REUSE_MAX = 1000
