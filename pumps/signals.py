"""Signals pumps sends once a change is committed; listeners must not assume a transaction."""

from django.dispatch import Signal

# Sent after commit with `pump_ids`: a recorded refill, programming change, event, status,
# detail or contact change that may alter the pump's reminders (the planner listens).
schedule_changed = Signal()
