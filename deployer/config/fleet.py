"""The [fleet] table: the hosts a controller rolls a release across, and how it paces them.

Parsed on its own, beside the rest of the config, with its own checks: every host once, each with the URL of
its deployer server and an operator key that server knows, a batch size and a canary that fit the host count.
Each error names the key, so a rollout never starts from a config that would skip a host or stall on one.

Between hosts the controller speaks https: its requests are signed, but only TLS keeps anyone on the path from
reading them, replaying them to another host or answering for a host. A plain http:// URL is accepted for a
loopback address, and for another host only with `insecure_http = true` in its entry, which each rollout names in
a warning. `ca_file` is the CA bundle that verifies a host's certificate when a private CA signed it.

    [fleet]
    apps = ["web"]
    max_parallel = "50%"     # or a count
    canary = "h1"            # a host's name, or a count of hosts
    bake = 30                # seconds between batches
    host_timeout = 600       # seconds a host may take to finish its deploy job
    deadline = 21600         # seconds a rollout may take from when it was queued (6 h): then it gives up and reverts

    [[fleet.hosts]]
    name = "h1"
    url = "https://h1.deploy.example:8443"
    key_id = "fleet"
    secret_file = "/etc/deployer/fleet-h1.secret"   # each host its own
    ca_file = "/etc/deployer/fleet-ca.pem"          # optional: a private CA

    [fleet.releases.web]     # optional: its GitHub releases, received here, queue a rollout
    repository = "example/web"
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.config.fields import APP_NAME_RE, KEY_ID_RE, absolute_path, duration, integer, only_keys, table, typed
from deployer.errors import ConfigError

HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
PERCENT_RE = re.compile(r"^([0-9]{1,3})%$")
# scheme://host[:port][/prefix]: no user, query or fragment (the plan layer may not import urllib, even through here)
URL_RE = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
KEYS = {"apps", "hosts", "max_parallel", "canary", "bake", "host_timeout", "deadline", "releases"}
HOST_KEYS = {"name", "url", "key_id", "secret_file", "secret_env", "ca_file", "insecure_http"}
DEFAULT_HOST_TIMEOUT = 600.0
# A rollout resumes after any number of controller stops, but not forever: past this (from when it was queued) it
# gives up and reverts. A fixed span rather than host_timeout x hosts: a rollout's pace is set as much by its bake
# and by how long a controller may stay down as by its hosts' deploys.
DEFAULT_DEADLINE = 6 * 3600.0

# read_secret(entry, name, where) -> the secret of `<name>_file` or `<name>_env`: load.py's one reader of secrets.
SecretReader = Callable[[Mapping[str, Any], str, str], str]


@dataclass(frozen=True)
class FleetHost:
    name: str
    url: str  # the base URL of its deployer server (POST /deploy, GET /jobs/<id>, GET /apps/<app>)
    key_id: str  # an operator key its server knows ([server.operators.KEY_ID] there)
    secret: str = field(repr=False)
    ca_file: Path | None = None  # the CA bundle that verifies its https certificate; None: the system's
    insecure_http: bool = False  # plain http to a host that is not this one, accepted in the config


@dataclass(frozen=True)
class FleetConfig:
    """What a rollout runs over. `max_parallel` and `canary` are kept as written; plan/rollout.py resolves them."""

    apps: tuple[str, ...]
    hosts: tuple[FleetHost, ...]
    max_parallel: int | str = 1  # a count of hosts, or "N%" of them (rounded up, at least 1)
    canary: int | str | None = None  # a host's name, or how many hosts form the first batch
    bake: float = 0.0
    host_timeout: float = DEFAULT_HOST_TIMEOUT
    deadline: float = DEFAULT_DEADLINE  # seconds from when a rollout was queued to when it gives up (and reverts)
    # [fleet.releases.APP]: the release policy of a fleet app whose GitHub releases queue a rollout here
    # (ReceiverApp values, parsed by load.py with the policy of every other app).
    releases: Mapping[str, Any] = field(default_factory=dict)

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)

    @property
    def insecure_hosts(self) -> tuple[str, ...]:
        """The hosts reached over plain http across a network: each rollout warns of them."""
        return tuple(h.name for h in self.hosts if h.insecure_http)

    def host(self, name: str) -> FleetHost:
        return next(h for h in self.hosts if h.name == name)


def parse_fleet(
    data: Any, *, path: Path, read_secret: SecretReader, releases: Mapping[str, Any] | None = None
) -> FleetConfig:
    data = table(data, path=path, key="fleet")
    only_keys(data, KEYS, path=path, where="fleet")
    apps = typed(data, "apps", list, None, path=path, key="fleet.apps")
    if (
        not apps
        or not all(isinstance(a, str) and APP_NAME_RE.fullmatch(a) for a in apps)
        or len(set(apps)) != len(apps)
    ):
        raise ConfigError(
            'must list the apps rolled out across the fleet, each once, e.g. ["web"]', path=path, key="fleet.apps"
        )
    hosts_data = typed(data, "hosts", list, None, path=path, key="fleet.hosts")
    if not hosts_data:
        raise ConfigError("at least one [[fleet.hosts]] entry is required", path=path, key="fleet.hosts")
    hosts: list[FleetHost] = []
    for i, entry in enumerate(hosts_data):
        hosts.append(_host(entry, f"fleet.hosts[{i}]", hosts, path=path, read_secret=read_secret))
    names = [h.name for h in hosts]
    return FleetConfig(
        apps=tuple(apps),
        hosts=tuple(hosts),
        max_parallel=check_max_parallel(data.get("max_parallel", 1), len(hosts), path=path, key="fleet.max_parallel"),
        canary=check_canary(data.get("canary"), names, path=path, key="fleet.canary"),
        bake=duration(data, "bake", 0.0, path=path, key="fleet.bake", zero=True),
        host_timeout=duration(data, "host_timeout", DEFAULT_HOST_TIMEOUT, path=path, key="fleet.host_timeout"),
        deadline=duration(data, "deadline", DEFAULT_DEADLINE, path=path, key="fleet.deadline"),
        releases=dict(releases or {}),
    )


def fleet_names(data: Any, *, path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """[fleet]'s apps and host names, for the receiver's console: no secret is read and no file looked at (a host's
    ca_file may be where the receiver's account cannot see), so the worker's `parse_fleet` stays the full check."""
    data = table(data, path=path, key="fleet")
    apps = data.get("apps")
    hosts = data.get("hosts")
    if not isinstance(apps, list) or not all(isinstance(a, str) and APP_NAME_RE.fullmatch(a) for a in apps):
        raise ConfigError('must list the apps rolled out across the fleet, e.g. ["web"]', path=path, key="fleet.apps")
    if not isinstance(hosts, list) or not all(
        isinstance(h, dict) and isinstance(h.get("name"), str) and HOST_NAME_RE.fullmatch(h["name"]) for h in hosts
    ):
        raise ConfigError("each [[fleet.hosts]] needs a name", path=path, key="fleet.hosts")
    return tuple(apps), tuple(h["name"] for h in hosts)


RELEASE_KEYS = {"repository", "tag_pattern", "prereleases", "github_secret_file", "github_secret_env", "github_hook_id"}


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
            raise ConfigError(
                "is required: the GitHub repository whose releases roll this app out",
                path=path,
                key=f"{where}.repository",
            )
    return tables


def _host(entry: Any, where: str, earlier: list[FleetHost], *, path: Path, read_secret: SecretReader) -> FleetHost:
    entry = table(entry, path=path, key=where)
    only_keys(entry, HOST_KEYS, path=path, where=where)
    name = entry.get("name")
    if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
        raise ConfigError(
            "must be 1 to 31 lowercase letters, digits or '-', starting with a letter", path=path, key=f"{where}.name"
        )
    url = entry.get("url")
    if not isinstance(url, str) or not URL_RE.fullmatch(url):
        raise ConfigError(
            "must be the base URL of the host's deployer server, e.g. https://h1.deploy.example:8443",
            path=path,
            key=f"{where}.url",
        )
    insecure = typed(entry, "insecure_http", bool, False, path=path, key=f"{where}.insecure_http")
    if insecure and not url.startswith("http://"):
        raise ConfigError("is only for a plain http:// url", path=path, key=f"{where}.insecure_http")
    check_server_url(
        url,
        insecure_http=insecure,
        path=path,
        key=f"{where}.url",
        consent=f"set insecure_http = true in [[fleet.hosts]] {name!r}",
    )
    ca_file = None
    if "ca_file" in entry:
        if not url.startswith("https://"):
            raise ConfigError("is only for an https:// url", path=path, key=f"{where}.ca_file")
        ca_file = absolute_path(entry["ca_file"], path.parent, path=path, key=f"{where}.ca_file")
        if not ca_file.is_file():
            raise ConfigError(f"names no file: {ca_file}", path=path, key=f"{where}.ca_file")
    key_id = entry.get("key_id")
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise ConfigError(
            "must be an operator key id the host's server knows ([server.operators.KEY_ID] there)",
            path=path,
            key=f"{where}.key_id",
        )
    for other in earlier:
        if other.name == name or other.url.rstrip("/") == url.rstrip("/"):
            same = "name" if other.name == name else "url"
            raise ConfigError(f"host {name!r} is listed twice: {other.name!r} has that {same}", path=path, key=where)
    return FleetHost(
        name=name,
        url=url.rstrip("/"),
        key_id=key_id,
        secret=read_secret(entry, "secret", where),
        ca_file=ca_file,
        insecure_http=insecure and not is_loopback_url(url),
    )


def url_host(url: str) -> str | None:
    """The host of an http(s) base URL (without brackets), or None when it is not one."""
    match = URL_RE.fullmatch(url)
    return match[1].strip("[]") if match else None


def is_loopback_url(url: str) -> bool:
    """Whether the URL names this host itself: localhost, 127.0.0.0/8 or ::1."""
    host = url_host(url)
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_url(url: str, *, insecure_http: bool, path: Path | None, key: str, consent: str) -> str:
    """A deployer server's base URL: https, or plain http to this host itself or with explicit consent.

    `consent` says how to give it (the config key, or the flag), named in the refusal."""
    if not URL_RE.fullmatch(url):
        raise ConfigError(
            "must be a server's base URL, http(s)://host[:port][/prefix], e.g. https://deploy.example:8443",
            path=path,
            key=key,
        )
    if url.startswith("http://") and not insecure_http and not is_loopback_url(url):
        raise ConfigError(
            "is plain http to another host: anyone on the path could read and replay its signed "
            f"requests. Use https:// (with a CA file for a private CA), or {consent} to accept it",
            path=path,
            key=key,
        )
    return url


def check_max_parallel(value: Any, host_count: int, *, path: Path | None, key: str) -> int | str:
    """A count from 1 to the host count, or "N%" with N from 1 to 100; the config's value or --max-parallel's."""
    if isinstance(value, str) and (match := PERCENT_RE.fullmatch(value)) and 1 <= int(match[1]) <= 100:
        return value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return integer(
        value,
        minimum=1,
        maximum=host_count,
        path=path,
        key=key,
        message=f'must be a count of hosts from 1 to {host_count}, or a percentage such as "50%"',
    )


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
    return integer(
        value,
        minimum=1,
        maximum=max(1, len(names) - 1),
        path=path,
        key=key,
        message=f"must be a host's name or a count of hosts from 1 to {max(1, len(names) - 1)}",
    )
