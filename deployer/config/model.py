"""What a loaded config is: frozen dataclasses, and the lookups the deployer and the receiver share.

Nothing here reads a file or the environment; `load.py` builds these, `fields.py` checks each value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.config.cluster import ClusterConfig
from deployer.config.fleet import FleetConfig
from deployer.errors import UnknownApp

SETS = ("blue", "green")
PROTOCOLS = ("tcp", "udp")
HOOK_NAMES = ("pre-deploy", "post-healthy", "post-flip", "post-deploy", "on-failure")

# Docker's reference grammar: a registry host[:port], then lowercase path components.
IMAGE_RE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9.-]+(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)$"
)


@dataclass(frozen=True)
class PortMapping:
    """One published port: clients use `external`; the instance of each set listens on its own host port."""

    external: int
    container: int
    protocol: str
    blue: int
    green: int

    def set_port(self, port_set: str) -> int:
        return self.blue if port_set == "blue" else self.green


@dataclass(frozen=True)
class HealthCheck:
    type: str  # "http" or "tcp"
    port: int  # container port whose set port is probed
    path: str = "/"
    expect_status: int = 200
    interval: float = 1.0
    timeout: float = 2.0
    successes: int = 3
    deadline: float = 60.0


@dataclass(frozen=True)
class RegistryAuth:
    registry: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class AssetConfig:
    """Take the image from a release asset (a `docker save` tarball) instead of the registry."""

    name: str  # e.g. "image.tar"; "<name>.sha256" is verified when the release has it
    token: str | None = field(default=None, repr=False)  # sent to the GitHub API host only
    max_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class WatchdogConfig:
    """`deployer watch`: probe the active instance every `interval`; `failures` in a row flip to the maintenance
    page, `recoveries` in a row flip back. Each flip needs a full streak, so rules never flap faster than that."""

    enabled: bool = True
    interval: float = 1.0
    failures: int = 3
    recoveries: int = 3


@dataclass(frozen=True)
class AppConfig:
    name: str
    image: str  # repository without tag, e.g. 127.0.0.1:5000/demo
    ports: tuple[PortMapping, ...]
    health: HealthCheck
    repository: str | None = None  # GitHub owner/name allowed to trigger deploys
    tag_pattern: str | None = None
    prereleases: bool = False
    bind: str = "127.0.0.1"
    drain_seconds: float = 10.0
    stop_timeout: int = 10
    restart: str = "unless-stopped"
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    volumes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    hooks_dir: Path | None = None
    asset: AssetConfig | None = None
    maintenance_page: Path | None = None  # HTML shown by the maintenance responder; None: the built-in page
    status_port: int | None = None  # the forward an upstream load balancer checks (see drain.py)
    host_bound: bool = False  # runs on the host itself; covered by the socket match (see hostbound.py)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    cluster: bool = False  # served on the shared address of [cluster] (see deployer/plan/cluster.py)
    github_secret: str | None = field(default=None, repr=False)  # signs this app's deliveries instead of [server]'s
    github_hook_id: int | None = None  # the one GitHub webhook (X-GitHub-Hook-ID) allowed to deploy it
    canary: int | None = None  # a GitHub release starts a canary with this share (see plan/canary.py)
    canary_sticky: bool = False  # that canary splits by client address
    canary_bake: float | None = None  # seconds a healthy canary runs before the watchdog promotes it
    image_wait: float | None = None  # seconds a GitHub release waits for its image; None: [deployer] image_wait
    ipv6: bool = True  # with [deployer] ipv6: IPv6 clients are DNATed too; false for an image that cannot listen on it

    @property
    def registry(self) -> str | None:
        match = IMAGE_RE.fullmatch(self.image)
        host = match.group("registry") if match else None
        # "library/nginx": the first component is a path, not a registry, unless it looks like a host.
        if host and ("." in host or ":" in host or host == "localhost"):
            return host
        return None

    def port_for(self, container_port: int, protocol: str = "tcp") -> PortMapping:
        for port in self.ports:
            if port.container == container_port and port.protocol == protocol:
                return port
        raise KeyError((container_port, protocol))


@dataclass(frozen=True)
class Settings:
    """Host-wide settings: where state lives, which chains and network the deployer owns."""

    state_dir: Path
    hooks_dir: Path
    hook_timeout: float = 60.0
    lock_wait: float = 0.0
    host_lock_wait: float = 30.0  # how long the netfilter and forward-return locks are waited for
    image_wait: float = 1800.0  # how long a GitHub release waits for its image to appear in the registry
    chain_prefix: str = "DEPLOYER"
    network: str = "deployer"
    bridge: str = "deployer0"
    docker_host: str = "unix:///var/run/docker.sock"
    iptables_wait: int = 10
    maintenance_port: int = 8999  # the maintenance responder's port, on every local address
    backend: str = "iptables"  # who writes the nat rules: iptables-restore, or nftables in process (backends.md)
    # Dual-stack: instances get an IPv6 address from this subnet too, and IPv6 clients are DNATed as IPv4 ones.
    # On unless the config says `ipv6 = false`, or a [cluster] has no IPv6 address. Said in the config
    # (`ipv6_explicit`), what cannot be done is refused; by default, a host without IPv6 in its kernel, or a Docker
    # network made IPv4-only before, serves IPv4 clients alone and says so (docs/ipv6.md).
    ipv6: bool = True
    ipv6_explicit: bool = False
    # A unique local /64 (RFC 4193); by default picked by the network's name (settings.default_ipv6_subnet): this
    # one is the default network's, "deployer".
    ipv6_subnet: str = "fd6e:3b1d:5e2a:eeb9::/64"
    # "fix": the deployer turns IPv6 forwarding on, accept_ra=2 first where a default route needs it; "check": it
    # refuses instead, naming the sysctls to set (docs/production.md)
    ipv6_forwarding: str = "fix"


@dataclass(frozen=True)
class OperatorKey:
    """One operator's key for signed manual requests; the id travels in the request, the secret never does.

    `scope` says what the key may do (receiver/scopes.py has the table): "operator" everything, "fleet" what a
    controller needs, "read" reading only. `apps`, when set, limits the key to those apps.
    """

    key_id: str
    secret: str = field(repr=False)
    scope: str = "operator"
    apps: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ServerConfig:
    """`deployer serve`: the webhook receiver (gunicorn) and the deploy worker."""

    listen: str = "127.0.0.1:8000"
    names: tuple[str, ...] = ("127.0.0.1:8000", "localhost:8000")  # the Host headers this server answers to
    workers: int = 2
    max_body_bytes: int = 1024 * 1024
    github_secret: str | None = field(default=None, repr=False)  # unset: every delivery is refused
    operators: Mapping[str, OperatorKey] = field(default_factory=dict)
    audit_token: str | None = field(default=None, repr=False)  # a bearer token that may read GET /audit only
    job_timeout: float = 1800.0
    github_api: str = "https://api.github.com"
    user: str = "deployer"  # the receiver drops to this account when serve starts as root; "root" only when said
    group: str | None = None  # shares the queue with the worker; None: the user's primary group
    # Who may read GET /metrics: a bearer token, the peer's address in these networks, or both when both are set;
    # neither set: nobody (docs/metrics.md).
    metrics_token: str | None = field(default=None, repr=False)
    metrics_allow: tuple[str, ...] = ()  # CIDRs, as ipaddress writes them
    public_url: str | None = None  # where clients reach this server: job pages are linked under it

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True)
class ConsoleConfig:
    """The read-only web console ([console]): who may sign in, the key that signs its cookie, a trusted proxy."""

    viewers: Mapping[str, str] = field(default_factory=dict, repr=False)  # name -> scrypt$... line
    session_key: str = field(default="", repr=False)
    session_hours: float = 12.0
    secure_cookie: bool = True  # off only for plain http on loopback (docs/console.md)
    trusted_proxy_header: str | None = None  # e.g. X-Forwarded-User, believed from trusted_proxies only
    trusted_proxies: tuple[str, ...] = ()


class AppLookup:
    """What the deployer and the receiver both ask of their apps: by name, by repository, whose secret signs."""

    apps: Mapping[str, Any]
    server: ServerConfig
    console: ConsoleConfig | None

    def app(self, name: str) -> Any:
        try:
            return self.apps[name]
        except KeyError:
            known = ", ".join(sorted(self.apps)) or "none"
            raise UnknownApp(f"unknown app {name!r} (configured: {known})", app=name) from None

    def app_for_repository(self, full_name: str) -> Any:
        for app in self.apps.values():
            if app.repository and app.repository.lower() == full_name.lower():
                return app
        return None

    def github_secret_for(self, repository: str | None) -> str | None:
        """The secret a delivery naming `repository` must be signed with: its app's own, else [server]'s.

        An app with its own secret never accepts the shared one, so no other repository's webhook signs for it.
        """
        app = self.app_for_repository(repository) if repository else None
        if app is not None and app.github_secret:
            return app.github_secret
        return self.server.github_secret

    def github_hook_id_for(self, repository: str | None) -> int | None:
        app = self.app_for_repository(repository) if repository else None
        return app.github_hook_id if app is not None else None

    def _server_secrets(self) -> list[str]:
        values = [self.server.github_secret] if self.server.github_secret else []
        values += [key.secret for key in self.server.operators.values()]
        values += [self.server.audit_token] if self.server.audit_token else []
        values += [self.server.metrics_token] if self.server.metrics_token else []
        values += [app.github_secret for app in self.apps.values() if app.github_secret]
        values += [self.console.session_key] if self.console else []
        return values


@dataclass(frozen=True)
class GithubReport:
    """An app whose deploys are reported to GitHub as deployments (config/reports.py)."""

    repository: str
    environment: str
    environment_url: str | None = None
    token: str = field(default="", repr=False)  # only `deployments: write` on the repository


@dataclass(frozen=True)
class NotifyTarget:
    """One [[notify]] target: where, in which format, signed with which secret, for which events."""

    name: str
    url: str
    format: str = "json"
    events: frozenset[str] = frozenset()
    secret: str | None = field(default=None, repr=False)
    url_is_secret: bool = False  # from url_file or url_env (a Slack webhook's URL is its credential)


@dataclass(frozen=True)
class ReportsConfig:
    """Who hears of the deploys: GitHub, per app, and the notification targets; read by the unprivileged report loop."""

    github: Mapping[str, GithubReport] = field(default_factory=dict)
    notify: tuple[NotifyTarget, ...] = ()
    timeout: float = 10.0  # seconds an answer is waited for

    def secrets(self) -> list[str]:
        values = [r.token for r in self.github.values() if r.token] + [t.secret for t in self.notify if t.secret]
        return values + [t.url for t in self.notify if t.url_is_secret]


@dataclass(frozen=True)
class ReportsSetup:
    """The report loop's config: where the state is, whom it reports to, and GitHub's API."""

    path: Path
    settings: Settings
    reports: ReportsConfig
    github_api: str = "https://api.github.com"
    job_pages: str | None = None  # [server] public_url when a [console] serves job pages there


@dataclass(frozen=True)
class Config(AppLookup):
    path: Path
    settings: Settings
    apps: Mapping[str, AppConfig]
    registries: Mapping[str, RegistryAuth] = field(default_factory=dict)
    # Names of the environment variables that carry secrets: kept out of hook environments.
    secret_env_names: frozenset[str] = frozenset()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    server: ServerConfig = field(default_factory=ServerConfig)
    cluster: ClusterConfig | None = None
    fleet: FleetConfig | None = None  # this deployer is a controller: it rolls these apps out to these hosts
    # The subset of secret_env_names the receiver reads: the only secrets gunicorn's environment carries.
    receiver_env_names: frozenset[str] = frozenset()
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    # The subset of secret_env_names the report loop reads: the GitHub tokens and the notification secrets.
    report_env_names: frozenset[str] = frozenset()
    console: ConsoleConfig | None = None  # the read-only web console; None: off

    @property
    def fleet_hosts(self) -> tuple[str, ...]:
        """The fleet's host names, as ReceiverConfig has them: what the console's fleet page reads."""
        return self.fleet.host_names if self.fleet else ()

    @property
    def fleet_apps(self) -> tuple[str, ...]:
        return self.fleet.apps if self.fleet else ()

    def hooks_dir_for(self, app: AppConfig) -> Path:
        return app.hooks_dir or self.settings.hooks_dir

    def secrets(self) -> list[str]:
        """Every secret value the config resolved, so tests and log filters can look for them."""
        values = [r.password for r in self.registries.values() if r.password]
        values += self._server_secrets()
        values += [app.asset.token for app in self.apps.values() if app.asset and app.asset.token]
        values += [host.secret for host in self.fleet.hosts] if self.fleet else []
        values += self.reports.secrets()
        values += [
            app.github_secret for app in (self.fleet.releases.values() if self.fleet else ()) if app.github_secret
        ]
        return values


@dataclass(frozen=True)
class ReceiverApp:
    """What the receiver knows of an app: enough to apply the release policy and check who signed."""

    name: str
    repository: str | None = None
    tag_pattern: str | None = None
    prereleases: bool = False
    asset: AssetConfig | None = None  # its name only: the token stays with the worker
    host_bound: bool = False
    github_secret: str | None = field(default=None, repr=False)
    github_hook_id: int | None = None
    # For the maintenance responder, which runs unprivileged too: which port is whose page.
    ports: tuple[PortMapping, ...] = ()
    maintenance_page: Path | None = None
    fleet: bool = False  # a controller's fleet app ([fleet.releases.NAME]): a release queues a rollout


@dataclass(frozen=True)
class ReceiverConfig(AppLookup):
    """The receiver's own config: it never holds registry passwords, asset tokens or app environments."""

    path: Path
    settings: Settings  # for state_dir: the queue and the audit log
    apps: Mapping[str, ReceiverApp]
    server: ServerConfig = field(default_factory=ServerConfig)
    secret_env_names: frozenset[str] = frozenset()
    console: ConsoleConfig | None = None
    # A controller's fleet by name alone (the console's fleet page); the keys to its hosts stay with the worker.
    fleet_hosts: tuple[str, ...] = ()
    fleet_apps: tuple[str, ...] = ()
    cluster: ClusterConfig | None = None  # a cluster host's [cluster], for the console's cluster page

    def secrets(self) -> list[str]:
        return self._server_secrets()
