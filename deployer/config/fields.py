"""One check per kind of value: each returns the value or raises ConfigError naming the file, the app and the key.

TOML has booleans, and Python's `True == 1`: every number check here refuses a bool, in one place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.errors import ConfigError

# iptables chain names are at most 28 characters: PREFIX (<= 8) + "-" + app (<= 19).
APP_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,18}$")
CHAIN_PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{0,7}$")
# Linux interface names are at most 15 characters.
BRIDGE_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,14}$")
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
RESTART_RE = re.compile(r"^(no|always|unless-stopped|on-failure(:[0-9]+)?)$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ASSET_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,200}$")
ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
# GitHub's hook ids are positive 64-bit integers; the header carries them as decimal digits.
MAX_HOOK_ID = 2**63 - 1
# The one duration format of the config and the command line: seconds as a number, or 90s, 10m, 1h.
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
DURATION_FORMS = "a number of seconds or a time such as 600, 90s, 10m or 1h"


def only_keys(
    data: Mapping[str, Any], allowed: set[str], *, path: Path, where: str | None, app: str | None = None
) -> None:
    for key in data:
        if key not in allowed:
            full = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown key (allowed: {', '.join(sorted(allowed))})", path=path, app=app, key=full)


def table(
    value: Any, *, path: Path, key: str | None, app: str | None = None, message: str = "must be a table"
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(message, path=path, app=app, key=key)
    return value


def typed(
    data: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    default: Any,
    *,
    path: Path,
    key: str,
    app: str | None = None,
) -> Any:
    """data[name] if it is of `kind` (a bool is never an int here), else `default` when it is missing."""
    if name not in data:
        return default
    value = data[name]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ConfigError(f"must be of type {_kind_name(kind)}", path=path, app=app, key=key)
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def integer(
    value: Any,
    *,
    minimum: int,
    maximum: int | None = None,
    path: Path,
    key: str,
    app: str | None = None,
    message: str | None = None,
) -> int:
    """A whole number in [minimum, maximum]; `message` says what it counts when the default would not."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise ConfigError(message or f"must be a whole number of at least {minimum}", path=path, app=app, key=key)
    return value


def port_number(value: Any, *, path: Path, key: str, app: str | None = None) -> int:
    return integer(
        value, minimum=1, maximum=65535, path=path, key=key, app=app, message="must be a port number from 1 to 65535"
    )


def number(
    data: Mapping[str, Any], name: str, default: float, *, path: Path, key: str, app: str | None = None
) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("must be a number", path=path, app=app, key=key)
    return value


def parse_duration(value: Any) -> float:
    """Seconds from 600, 2.5, "600", "90s", "10m" or "1h": one parser for the config's keys and the flags.

    Raises ValueError naming the forms it takes; the sign is the caller's to check.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    match = DURATION_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"must be {DURATION_FORMS}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def duration(
    data: Mapping[str, Any],
    name: str,
    default: float,
    *,
    path: Path,
    key: str,
    app: str | None = None,
    zero: bool = False,
) -> float:
    """Seconds (parse_duration's forms): greater than 0, or not negative when `zero` means something (no wait)."""
    try:
        value = parse_duration(data.get(name, default))
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, app=app, key=key) from None
    if zero and value < 0:
        raise ConfigError("must not be negative", path=path, app=app, key=key)
    if not zero and value <= 0:
        raise ConfigError("must be greater than 0", path=path, app=app, key=key)
    return value


def matching(value: Any, regex: re.Pattern[str], message: str, *, path: Path, key: str, app: str | None = None) -> str:
    if not isinstance(value, str) or not regex.fullmatch(value):
        raise ConfigError(message, path=path, app=app, key=key)
    return value


def absolute_path(value: Any, base: Path, *, path: Path, key: str, app: str | None = None) -> Path:
    """A path from the config, made absolute against `base` (the config file's folder) now.

    Later code runs with other working folders (a hook runs in its own), so a relative path would
    silently name another file there.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a path", path=path, app=app, key=key)
    candidate = Path(value)
    return candidate if candidate.is_absolute() else base / candidate


def hook_id(value: Any, *, path: Path, key: str, app: str | None = None) -> int:
    return integer(
        value,
        minimum=1,
        maximum=MAX_HOOK_ID,
        path=path,
        key=key,
        app=app,
        message="must be the GitHub webhook's id, a whole number (Settings, Webhooks, the hook's URL)",
    )
