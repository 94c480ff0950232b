"""The [fleet] table: the hosts a controller rolls a release across, and how it paces them.

Parsed on its own, beside the rest of the config, with its own checks: every host once, each with the URL of
its deployer server and an operator key that server knows, a batch size and a canary that fit the host count.
Each error names the key, so a rollout never starts from a config that would skip a host or stall on one.

    [fleet]
    apps = ["web"]
    max_parallel = "50%"     # or a count
    canary = "h1"            # a host's name, or a count of hosts
    bake = 30                # seconds between batches
    host_timeout = 600       # seconds a host may take to finish its deploy job

    [[fleet.hosts]]
    name = "h1"
    url = "http://10.0.0.1:8000"
    key_id = "fleet"
    secret_file = "/etc/deployer/fleet.secret"

    [fleet.releases.web]     # optional: its GitHub releases, received here, queue a rollout
    repository = "example/web"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from deployer.config.fields import APP_NAME_RE, KEY_ID_RE, duration, integer, only_keys, table, typed
from deployer.errors import ConfigError

HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
PERCENT_RE = re.compile(r"^([0-9]{1,3})%$")
# scheme://host[:port][/prefix]: no user, query or fragment (the plan layer may not import urllib, even through here)
URL_RE = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
KEYS = {"apps", "hosts", "max_parallel", "canary", "bake", "host_timeout", "releases"}
HOST_KEYS = {"name", "url", "key_id", "secret_file", "secret_env"}
DEFAULT_HOST_TIMEOUT = 600.0

# read_secret(entry, name, where) -> the secret of `<name>_file` or `<name>_env`: load.py's one reader of secrets.
SecretReader = Callable[[Mapping[str, Any], str, str], str]


@dataclass(frozen=True)
class FleetHost:
    name: str
    url: str  # the base URL of its deployer server (POST /deploy, GET /jobs/<id>, GET /apps/<app>)
    key_id: str  # an operator key its server knows ([server.operators.KEY_ID] there)
    secret: str = field(repr=False)


@dataclass(frozen=True)
class FleetConfig:
    """What a rollout runs over. `max_parallel` and `canary` are kept as written; plan/rollout.py resolves them."""

    apps: tuple[str, ...]
    hosts: tuple[FleetHost, ...]
    max_parallel: int | str = 1  # a count of hosts, or "N%" of them (rounded up, at least 1)
    canary: int | str | None = None  # a host's name, or how many hosts form the first batch
    bake: float = 0.0
    host_timeout: float = DEFAULT_HOST_TIMEOUT
    # [fleet.releases.APP]: the release policy of a fleet app whose GitHub releases queue a rollout here
    # (ReceiverApp values, parsed by load.py with the policy of every other app).
    releases: Mapping[str, Any] = field(default_factory=dict)

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)

    def host(self, name: str) -> FleetHost:
        return next(h for h in self.hosts if h.name == name)


def parse_fleet(data: Any, *, path: Path, read_secret: SecretReader,
                releases: Mapping[str, Any] | None = None) -> FleetConfig:
    data = table(data, path=path, key="fleet")
    only_keys(data, KEYS, path=path, where="fleet")
    apps = typed(data, "apps", list, None, path=path, key="fleet.apps")
    if not apps or not all(isinstance(a, str) and APP_NAME_RE.fullmatch(a) for a in apps) \
            or len(set(apps)) != len(apps):
        raise ConfigError("must list the apps rolled out across the fleet, each once, e.g. [\"web\"]",
                          path=path, key="fleet.apps")
    hosts_data = typed(data, "hosts", list, None, path=path, key="fleet.hosts")
    if not hosts_data:
        raise ConfigError("at least one [[fleet.hosts]] entry is required", path=path, key="fleet.hosts")
    hosts: list[FleetHost] = []
    for i, entry in enumerate(hosts_data):
        hosts.append(_host(entry, f"fleet.hosts[{i}]", hosts, path=path, read_secret=read_secret))
    names = [h.name for h in hosts]
    return FleetConfig(
        apps=tuple(apps), hosts=tuple(hosts),
        max_parallel=check_max_parallel(data.get("max_parallel", 1), len(hosts), path=path, key="fleet.max_parallel"),
        canary=check_canary(data.get("canary"), names, path=path, key="fleet.canary"),
        bake=duration(data, "bake", 0.0, path=path, key="fleet.bake", zero=True),
        host_timeout=duration(data, "host_timeout", DEFAULT_HOST_TIMEOUT, path=path, key="fleet.host_timeout"),
        releases=dict(releases or {}),
    )


RELEASE_KEYS = {"repository", "tag_pattern", "prereleases", "github_secret_file", "github_secret_env",
                "github_hook_id"}


def release_tables(data: Mapping[str, Any], *, path: Path) -> dict[str, dict[str, Any]]:
    """The [fleet.releases.APP] tables, each naming a fleet app and holding only release-policy keys."""
    fleet = data.get("fleet")
    if not isinstance(fleet, dict):
        return {}
    tables = table(fleet.get("releases", {}), path=path, key="fleet.releases")
    apps = fleet.get("apps") if isinstance(fleet.get("apps"), list) else []
    for name, entry in tables.items():
        where = f"fleet.releases.{name}"
        if name not in apps:
            raise ConfigError("names no app of [fleet] apps", path=path, key=where)
        only_keys(table(entry, path=path, key=where), RELEASE_KEYS, path=path, where=where)
        if "repository" not in entry:
            raise ConfigError("is required: the GitHub repository whose releases roll this app out", path=path,
                              key=f"{where}.repository")
    return tables


def _host(entry: Any, where: str, earlier: list[FleetHost], *, path: Path, read_secret: SecretReader) -> FleetHost:
    entry = table(entry, path=path, key=where)
    only_keys(entry, HOST_KEYS, path=path, where=where)
    name = entry.get("name")
    if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
        raise ConfigError("must be 1 to 31 lowercase letters, digits or '-', starting with a letter",
                          path=path, key=f"{where}.name")
    url = entry.get("url")
    if not isinstance(url, str) or not URL_RE.fullmatch(url):
        raise ConfigError("must be the base URL of the host's deployer server, e.g. http://10.0.0.1:8000",
                          path=path, key=f"{where}.url")
    key_id = entry.get("key_id")
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise ConfigError("must be an operator key id the host's server knows ([server.operators.KEY_ID] there)",
                          path=path, key=f"{where}.key_id")
    for other in earlier:
        if other.name == name or other.url.rstrip("/") == url.rstrip("/"):
            same = "name" if other.name == name else "url"
            raise ConfigError(f"host {name!r} is listed twice: {other.name!r} has that {same}", path=path, key=where)
    return FleetHost(name=name, url=url.rstrip("/"), key_id=key_id, secret=read_secret(entry, "secret", where))


def check_max_parallel(value: Any, host_count: int, *, path: Path | None, key: str) -> int | str:
    """A count from 1 to the host count, or "N%" with N from 1 to 100; the config's value or --max-parallel's."""
    if isinstance(value, str) and (match := PERCENT_RE.fullmatch(value)) and 1 <= int(match[1]) <= 100:
        return value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return integer(value, minimum=1, maximum=host_count, path=path, key=key,
                   message=f"must be a count of hosts from 1 to {host_count}, or a percentage such as \"50%\"")


def check_canary(value: Any, names: list[str] | tuple[str, ...], *, path: Path | None, key: str) -> int | str | None:
    """None, a host's name, or how many hosts (at least 1, fewer than all) form the first batch."""
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, str):
        if value not in names:
            raise ConfigError(f"names no host of [[fleet.hosts]] ({', '.join(names)})", path=path, key=key)
        return value
    return integer(value, minimum=1, maximum=max(1, len(names) - 1), path=path, key=key,
                   message=f"must be a host's name or a count of hosts from 1 to {max(1, len(names) - 1)}")
