"""What a host answered, shown on a terminal: every control character escaped, nothing else changed."""

from __future__ import annotations

import pytest

from deployer.plan.printable import printable


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("v2.1.0", "v2.1.0"),
        ("déploiement ok", "déploiement ok"),
        ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
        ("line\nforged: ok\r", "line\\nforged: ok\\r"),
        ("tab\there", "tab\\there"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("bidi \u202eevil", "bidi \\u202eevil"),
        ("sep\u2028arator", "sep\\u2028arator"),
        (None, "None"),
        (12, "12"),
    ],
)
def test_control_characters_are_escaped_and_the_rest_kept(value, shown):
    assert printable(value) == shown


def test_a_long_text_is_cut_before_it_is_escaped():
    assert printable("x" * 10 + "\x1b", limit=5) == "xxxxx..."
    assert printable("abc", limit=5) == "abc"
