"""Keep the database's copies of row values out of log lines (README "What logs contain").

PostgreSQL puts the offending values in its errors: a unique violation names the key's
values, a NOT NULL or CHECK violation prints the whole row (a patient's name, date of birth,
phone), a bad literal is quoted back. Such an error reaches a log only through a bug or a
race (the services validate first), as a 500's traceback or a failed task's; this filter,
on every handler, keeps its values out while the error itself stays readable.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    # "DETAIL:  Key (clinic_id, mrn)=(1, MRN-1) already exists." / "DETAIL:  Failing row contains (...)."
    (re.compile(r"^(\s*DETAIL:).*$", re.MULTILINE), r"\1 [values removed]"),
    # "LINE 1: select '...'": the statement around a bad literal.
    (re.compile(r"^(\s*LINE \d+:).*$", re.MULTILINE), r"\1 [statement removed]"),
    # 'invalid input syntax for type date: "..."', 'value out of range: "..."'
    (re.compile(r"((?:for type|for enum|out of range)[^:\n]*:\s*)\"[^\"\n]*\""), r'\1"[value removed]"'),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactDatabaseValues(logging.Filter):
    """Rewrites a record's message and traceback in place, so every handler sees the redacted text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        message = record.getMessage()
        if redact(message) != message:
            record.msg, record.args = redact(message), None
        return True


def install(logger: logging.Logger) -> None:
    """Add the filter to each handler of `logger` (Celery replaces Django's handlers with its own)."""
    for handler in logger.handlers:
        if not any(isinstance(f, RedactDatabaseValues) for f in handler.filters):
            handler.addFilter(RedactDatabaseValues())
