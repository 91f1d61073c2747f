"""CSV cells that a spreadsheet opens as text, never as a formula (CSV injection, OWASP).

A name or note typed as "=HYPERLINK(...)" must stay text when staff open an export in
Excel or LibreOffice: a leading =, +, -, @, tab or carriage return gets a quote in front.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in FORMULA_STARTS else text
