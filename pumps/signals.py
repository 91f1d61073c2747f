"""Signals pumps sends once a change is committed; listeners must not assume a transaction."""

from django.dispatch import Signal

# Sent after commit with `pump_ids`: a recorded refill, programming change, event, status,
# detail or contact change that may alter the pump's reminders (the planner listens).
schedule_changed = Signal()

# Sent inside the recording transaction, so a listener's writes (the webhook outbox)
# commit or roll back with the record. Listeners must only write rows, never call out.
refill_recorded = Signal()  # refill=Refill
dose_changed = Signal()  # program=Program (a programming change, not a concentration change at a refill)
