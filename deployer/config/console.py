"""The [console] table: the read-only web console's viewers, its session key and cookie, a trusted proxy.

The console is off unless the table is there (and `enabled` is not false). Its viewers are names with a password
hash (`deployer console passwd NAME`), never a password; the key that signs its cookie is a secret, read from a
file or the environment like every other.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.fields import KEY_ID_RE, number, only_keys, table, typed
from deployer.config.model import ConsoleConfig
from deployer.config.secrets import read_secret
from deployer.errors import ConfigError
from deployer.passwords import hash_problem

MIN_SESSION_KEY = 32
MAX_SESSION_HOURS = 24 * 30
HEADER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
KEYS = {
    "enabled",
    "viewers",
    "session_key",
    "session_key_file",
    "session_key_env",
    "session_hours",
    "secure_cookie",
    "trusted_proxy_header",
    "trusted_proxies",
}


def parse_console(
    data: Any, *, path: Path, base: Path, environ: Mapping[str, str], secret_env_names: set[str]
) -> ConsoleConfig | None:
    """The console's settings, or None when it is off."""
    data = table(data, path=path, key="console")
    only_keys(data, KEYS, path=path, where="console")
    if not typed(data, "enabled", bool, True, path=path, key="console.enabled"):
        return None
    viewers = _viewers(data.get("viewers", {}), path=path)
    header = typed(data, "trusted_proxy_header", str, None, path=path, key="console.trusted_proxy_header")
    if header is not None and not HEADER_NAME_RE.fullmatch(header):
        raise ConfigError(
            "must be a header name such as X-Forwarded-User", path=path, key="console.trusted_proxy_header"
        )
    proxies = _networks(data, path=path)
    if (header is None) != (not proxies):
        raise ConfigError(
            "trusted_proxy_header and trusted_proxies go together: the header is believed only from those addresses",
            path=path,
            key="console",
        )
    if not viewers and header is None:
        raise ConfigError(
            "no one can sign in: name viewers (deployer console passwd NAME) or a trusted_proxy_header",
            path=path,
            key="console.viewers",
        )
    key = read_secret(
        data, "session_key", path=path, base=base, environ=environ, where="console", secret_env_names=secret_env_names
    )
    if len(key) < MIN_SESSION_KEY:
        raise ConfigError(
            f"the session key is shorter than {MIN_SESSION_KEY} characters; make one with: openssl rand -hex 32",
            path=path,
            key="console.session_key_file" if "session_key_file" in data else "console.session_key_env",
        )
    hours = number(data, "session_hours", ConsoleConfig.session_hours, path=path, key="console.session_hours")
    if not 0 < hours <= MAX_SESSION_HOURS:
        raise ConfigError(
            f"must be more than 0 and at most {MAX_SESSION_HOURS} hours", path=path, key="console.session_hours"
        )
    return ConsoleConfig(
        viewers=viewers,
        session_key=key,
        session_hours=float(hours),
        secure_cookie=typed(data, "secure_cookie", bool, True, path=path, key="console.secure_cookie"),
        trusted_proxy_header=header,
        trusted_proxies=proxies,
    )


def _viewers(data: Any, *, path: Path) -> dict[str, str]:
    viewers = table(data, path=path, key="console.viewers", message='must be a table of NAME = "scrypt$..." lines')
    for name, encoded in viewers.items():
        where = f"console.viewers.{name}"
        if not KEY_ID_RE.fullmatch(name):
            raise ConfigError("viewer names are 1 to 64 letters, digits, '.', '_' or '-'", path=path, key=where)
        problem = hash_problem(encoded) if isinstance(encoded, str) else "must be a string"
        if problem is not None:
            raise ConfigError(problem, path=path, key=where)
    return dict(viewers)


def _networks(data: Mapping[str, Any], *, path: Path) -> tuple[str, ...]:
    """The proxies' networks, as written (`127.0.0.1/32`, `::1/128`)."""
    values = typed(data, "trusted_proxies", list, [], path=path, key="console.trusted_proxies")
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value)))
        except (TypeError, ValueError):
            raise ConfigError(
                f"{str(value)[:60]!r} is not a network such as 127.0.0.1/32", path=path, key="console.trusted_proxies"
            ) from None
    return tuple(networks)
