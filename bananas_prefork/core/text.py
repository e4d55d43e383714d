"""Text that jobs supply (errors, tracebacks, results, ids) made safe to show.

Such text is data, never instructions to a terminal or a log reader: control
characters (terminal escapes, bells, carriage returns, line separators) are
shown as escapes, and a one-line field cannot forge a second line. Markup is
never interpreted: the operator's tools render it as plain text.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_LINES = re.compile(r"[\r\n]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def literal(text: str) -> str:
    """Control characters escaped; line breaks and tabs kept (a traceback stays readable)."""
    return _CONTROL.sub(_escape, text)


def one_line(text: str) -> str:
    """Control characters and line breaks escaped: exactly one line."""
    return literal(_LINES.sub(lambda m: "\\n" if m.group() == "\n" else "\\r", text))
