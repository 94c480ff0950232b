"""The effective config as plain JSON values, every secret masked: what `deployer check --print` shows (pure).

Every default filled in and every path made absolute, as the deployer uses them. A field the model declares with
`repr=False` holds a secret (a password, a token, a GitHub secret, an operator's key, an app's environment, which
env files fill): its value is masked, never printed. The file or variable a secret comes from is a path or a
name, and shows. Any value that still equals one of the config's secrets is masked as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

MASK = "********"
LEFT_OUT = frozenset({"raw"})  # the TOML as read: what the other fields already say, resolved
MIN_MASKED_IN_TEXT = 8  # a secret this long is masked inside longer values too; a shorter one only as a whole value


def effective_config(config: Any, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """`config` (the loaded model) as a JSON document; `secrets`: the values to mask wherever they appear."""
    known = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    value = plain(config, known)
    assert isinstance(value, dict)
    return value


def plain(value: Any, secrets: list[str]) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: masked(getattr(value, item.name)) if not item.repr else plain(getattr(value, item.name), secrets)
            for item in dataclasses.fields(value)
            if item.name not in LEFT_OUT
        }
    if isinstance(value, Mapping):
        return {str(key): plain(item, secrets) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return [plain(item, secrets) for item in sorted(value, key=str)]
    if isinstance(value, (list, tuple)):
        return [plain(item, secrets) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, str):
        return hide(value, secrets)
    return value


def masked(value: Any) -> Any:
    """A secret field: None stays None (unset), a mapping keeps its keys (an environment's names), the rest goes."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(key): MASK for key in value}
    return MASK


def hide(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if text == secret:
            return MASK
        if len(secret) >= MIN_MASKED_IN_TEXT and secret in text:
            text = text.replace(secret, MASK)
    return text
