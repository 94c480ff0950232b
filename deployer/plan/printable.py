"""Text from another host, made safe for a terminal and a log line: every control character shown escaped.

A tag, a reason or an error text that a host answered reaches `rollout --wait`, `fleet status` and the audit
log. An escape sequence in it could move the cursor, rewrite earlier lines or set the window title, and a
newline could forge a line; shown as `\\x1b` or `\\n`, it is only text.
"""

from __future__ import annotations

import unicodedata

# Cc: C0, DEL and C1; Cf: format characters such as the bidi overrides; Zl, Zp: line and paragraph separators.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def escaped(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(value: object, limit: int | None = None) -> str:
    """`value` as text with no control character left in it; cut to `limit` characters (then ending in ...)."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return "".join(escaped(c) if unicodedata.category(c) in HIDDEN_CATEGORIES else c for c in text)
