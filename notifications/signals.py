"""Signals the notifications app sends; listeners must only write rows, never call out."""

from django.dispatch import Signal

# Sent inside the transaction that raises (or reopens) staff escalations, with
# `escalations`: a list of Escalation rows (the webhook outbox listens).
escalations_raised = Signal()
