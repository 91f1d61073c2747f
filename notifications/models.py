"""The message outbox, plans, transports and escalations arrive with the reminders issue."""
