"""Load and validate the TOML config once; nothing else in the project reads the environment.

Every error names the file, the app and the key, so an operator can fix it without reading code.
Secrets are never written in the config: it names a file or an environment variable instead.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from deployer.config.cluster import ClusterConfig, check_cluster_apps, parse_cluster
from deployer.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/deployer/deployer.toml")
CONFIG_ENV = "DEPLOYER_CONFIG"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

SETS = ("blue", "green")
PROTOCOLS = ("tcp", "udp")
HOOK_NAMES = ("pre-deploy", "post-healthy", "post-flip", "post-deploy", "on-failure")

# iptables chain names are at most 28 characters: PREFIX (<= 8) + "-" + app (<= 19).
APP_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,18}$")
CHAIN_PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{0,7}$")
# Linux interface names are at most 15 characters.
BRIDGE_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,14}$")
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# Docker's reference grammar: a registry host[:port], then lowercase path components.
IMAGE_RE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9.-]+(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)$"
)
RESTART_RE = re.compile(r"^(no|always|unless-stopped|on-failure(:[0-9]+)?)$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ASSET_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,200}$")
ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
MIN_OPERATOR_SECRET = 16


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
    chain_prefix: str = "DEPLOYER"
    network: str = "deployer"
    bridge: str = "deployer0"
    docker_host: str = "unix:///var/run/docker.sock"
    iptables_wait: int = 10
    maintenance_port: int = 8999  # the maintenance responder's port, on every local address


@dataclass(frozen=True)
class OperatorKey:
    """One operator's key for signed manual requests; the id travels in the request, the secret never does."""

    key_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class ServerConfig:
    """`deployer serve`: the webhook receiver (gunicorn) and the deploy worker."""

    listen: str = "127.0.0.1:8000"
    workers: int = 2
    max_body_bytes: int = 1024 * 1024
    github_secret: str | None = field(default=None, repr=False)  # unset: every delivery is refused
    operators: Mapping[str, OperatorKey] = field(default_factory=dict)
    audit_token: str | None = field(default=None, repr=False)  # a bearer token that may read GET /audit only
    job_timeout: float = 1800.0
    github_api: str = "https://api.github.com"
    user: str | None = None  # the receiver drops to this account when serve starts as root
    group: str | None = None  # shares the queue with the worker

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True)
class Config:
    path: Path
    settings: Settings
    apps: Mapping[str, AppConfig]
    registries: Mapping[str, RegistryAuth] = field(default_factory=dict)
    # Names of the environment variables that carry secrets: kept out of hook environments.
    secret_env_names: frozenset[str] = frozenset()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    server: ServerConfig = field(default_factory=ServerConfig)
    cluster: ClusterConfig | None = None

    def app(self, name: str) -> AppConfig:
        from deployer.errors import UnknownApp

        try:
            return self.apps[name]
        except KeyError:
            known = ", ".join(sorted(self.apps)) or "none"
            raise UnknownApp(f"unknown app {name!r} (configured: {known})", app=name) from None

    def app_for_repository(self, full_name: str) -> AppConfig | None:
        for app in self.apps.values():
            if app.repository and app.repository.lower() == full_name.lower():
                return app
        return None

    def hooks_dir_for(self, app: AppConfig) -> Path:
        return app.hooks_dir or self.settings.hooks_dir

    def secrets(self) -> list[str]:
        """Every secret value the config resolved, so tests and log filters can look for them."""
        values = [r.password for r in self.registries.values() if r.password]
        values += [self.server.github_secret] if self.server.github_secret else []
        values += [key.secret for key in self.server.operators.values()]
        values += [self.server.audit_token] if self.server.audit_token else []
        values += [app.asset.token for app in self.apps.values() if app.asset and app.asset.token]
        return values


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config path: the --config flag, else $DEPLOYER_CONFIG, else /etc/deployer/deployer.toml."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def local_actor(environ: Mapping[str, str] | None = None) -> str:
    """Who runs the CLI: the user behind sudo when there is one, as the audit log's actor."""
    import getpass

    environ = os.environ if environ is None else environ
    user = environ.get("SUDO_USER") or getpass.getuser()
    return f"cli:{user}"


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError naming the file, app and key."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config file not found", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path=path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None
    return parse(data, path=path, environ=environ)


def parse(data: Mapping[str, Any], *, path: Path, environ: Mapping[str, str]) -> Config:
    base = path.parent
    _only_keys(data, {"deployer", "apps", "registries", "server", "cluster"}, path=path, where=None)
    settings = _parse_settings(data.get("deployer", {}), path=path, base=base, environ=environ)
    secret_env_names: set[str] = set()
    registries = _parse_registries(data.get("registries", {}), path=path, base=base, environ=environ,
                                   secret_env_names=secret_env_names)
    apps_data = data.get("apps", {})
    if not isinstance(apps_data, dict) or not apps_data:
        raise ConfigError("at least one app must be configured under [apps.NAME]", path=path, key="apps")
    apps = {name: _parse_app(name, value, path=path, base=base, environ=environ, secret_env_names=secret_env_names)
            for name, value in apps_data.items()}
    _check_port_conflicts(apps, path=path, maintenance_port=settings.maintenance_port)
    _check_repositories(apps, path=path)
    server = _parse_server(data.get("server", {}), path=path, base=base, environ=environ,
                           secret_env_names=secret_env_names)
    cluster = parse_cluster(data["cluster"], path=path) if "cluster" in data else None
    check_cluster_apps(cluster, {name: app.cluster for name, app in apps.items()}, path=path)
    return Config(path=path, settings=settings, apps=apps, registries=registries,
                  secret_env_names=frozenset(secret_env_names), raw=data, server=server, cluster=cluster)


# --- sections ------------------------------------------------------------------------------------


def _parse_settings(data: Any, *, path: Path, base: Path, environ: Mapping[str, str]) -> Settings:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, key="deployer")
    allowed = {"state_dir", "hooks_dir", "hook_timeout", "lock_wait", "chain_prefix", "network", "bridge",
               "docker_host", "iptables_wait", "maintenance_port"}
    _only_keys(data, allowed, path=path, where="deployer")
    key = lambda k: f"deployer.{k}"  # noqa: E731
    prefix = _get(data, "chain_prefix", str, "DEPLOYER", path=path, key=key("chain_prefix"))
    if not CHAIN_PREFIX_RE.fullmatch(prefix):
        raise ConfigError("must be 1 to 8 uppercase letters or digits, starting with a letter",
                          path=path, key=key("chain_prefix"))
    if prefix in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD") or prefix.startswith("DOCKER"):
        raise ConfigError("must not name a built-in chain or Docker's chains: the deployer owns every chain "
                          "it names", path=path, key=key("chain_prefix"))
    bridge = _get(data, "bridge", str, "deployer0", path=path, key=key("bridge"))
    if not BRIDGE_RE.fullmatch(bridge):
        raise ConfigError("must be a Linux interface name of at most 15 characters", path=path, key=key("bridge"))
    network = _get(data, "network", str, "deployer", path=path, key=key("network"))
    if not re.fullmatch(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", network):
        raise ConfigError("must be a Docker network name", path=path, key=key("network"))
    return Settings(
        state_dir=_path(data.get("state_dir", "state"), base, path=path, key=key("state_dir")),
        hooks_dir=_path(data.get("hooks_dir", "hooks"), base, path=path, key=key("hooks_dir")),
        hook_timeout=_positive(data, "hook_timeout", 60.0, path=path, key=key("hook_timeout")),
        lock_wait=_non_negative(data, "lock_wait", 0.0, path=path, key=key("lock_wait")),
        chain_prefix=prefix,
        network=network,
        bridge=bridge,
        docker_host=(_get(data, "docker_host", str, None, path=path, key=key("docker_host"))
                     or environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST),
        iptables_wait=int(_positive(data, "iptables_wait", 10, path=path, key=key("iptables_wait"))),
        maintenance_port=_port(data.get("maintenance_port", Settings.maintenance_port), path=path,
                               key=key("maintenance_port")),
    )


def _parse_registries(data: Any, *, path: Path, base: Path, environ: Mapping[str, str],
                      secret_env_names: set[str]) -> dict[str, RegistryAuth]:
    if not isinstance(data, dict):
        raise ConfigError("must be a table of registry hosts", path=path, key="registries")
    registries = {}
    for host, entry in data.items():
        where = f"registries.{host}"
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", path=path, key=where)
        # "password" is allowed here only so read_secret can explain why it is refused.
        _only_keys(entry, {"username", "password", "password_file", "password_env"}, path=path, where=where)
        username = _get(entry, "username", str, None, path=path, key=f"{where}.username")
        if not username:
            raise ConfigError("is required", path=path, key=f"{where}.username")
        password = read_secret(entry, "password", path=path, base=base, environ=environ, where=where,
                               secret_env_names=secret_env_names)
        registries[host] = RegistryAuth(registry=host, username=username, password=password)
    return registries


def read_secret(entry: Mapping[str, Any], name: str, *, path: Path, base: Path, environ: Mapping[str, str],
                where: str, secret_env_names: set[str], required: bool = True) -> str | None:
    """Resolve `<name>_file` or `<name>_env`. A secret written inline in the config is refused."""
    if name in entry:
        raise ConfigError(f"secrets are not written in the config: use {name}_file or {name}_env",
                          path=path, key=f"{where}.{name}")
    file_key, env_key = f"{name}_file", f"{name}_env"
    if file_key in entry and env_key in entry:
        raise ConfigError(f"set only one of {file_key} and {env_key}", path=path, key=where)
    if file_key in entry:
        secret_path = _path(entry[file_key], base, path=path, key=f"{where}.{file_key}")
        try:
            value = secret_path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {secret_path}: {exc.strerror}",
                              path=path, key=f"{where}.{file_key}") from None
    elif env_key in entry:
        var = _get(entry, env_key, str, None, path=path, key=f"{where}.{env_key}")
        secret_env_names.add(var)
        value = environ.get(var, "")
        if not value:
            raise ConfigError(f"environment variable {var} is not set", path=path, key=f"{where}.{env_key}")
    elif required:
        raise ConfigError(f"one of {file_key} or {env_key} is required", path=path, key=where)
    else:
        return None
    if not value:
        raise ConfigError("secret is empty", path=path, key=f"{where}.{file_key}")
    return value


def _parse_app(name: str, data: Any, *, path: Path, base: Path, environ: Mapping[str, str],
               secret_env_names: set[str]) -> AppConfig:
    if not APP_NAME_RE.fullmatch(name):
        raise ConfigError("app names are 1 to 19 lowercase letters, digits or '-', starting with a letter",
                          path=path, app=name)
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, app=name)
    if _get(data, "host_bound", bool, False, path=path, key="host_bound", app=name):
        return _parse_host_bound_app(name, data, path=path, base=base)
    allowed = {"image", "ports", "health", "repository", "tag_pattern", "prereleases", "bind", "drain_seconds",
               "stop_timeout", "restart", "env", "env_files", "volumes", "labels", "command", "hooks_dir", "asset",
               "maintenance_page", "status_port", "host_bound", "watchdog", "cluster"}
    _only_keys(data, allowed, path=path, where=None, app=name)

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return _get(data, key, kind, default, path=path, key=key, app=name)

    image = get("image", str, None)
    if not image:
        raise ConfigError("is required", path=path, app=name, key="image")
    if "@" in image or not IMAGE_RE.fullmatch(image):
        raise ConfigError("must be an image repository without tag or digest, e.g. registry.example:5000/app",
                          path=path, app=name, key="image")

    repository = get("repository", str, None)
    if repository is not None and not REPOSITORY_RE.fullmatch(repository):
        raise ConfigError("must be a GitHub repository as owner/name", path=path, app=name, key="repository")

    tag_pattern = get("tag_pattern", str, None)
    if tag_pattern is not None:
        try:
            re.compile(tag_pattern)
        except re.error as exc:
            raise ConfigError(f"not a valid regular expression: {exc}", path=path, app=name,
                              key="tag_pattern") from None

    bind = get("bind", str, "127.0.0.1")
    try:
        ipaddress.IPv4Address(bind)
    except ValueError:
        raise ConfigError("must be an IPv4 address", path=path, app=name, key="bind") from None

    restart = get("restart", str, "unless-stopped")
    if not RESTART_RE.fullmatch(restart):
        raise ConfigError("must be no, always, unless-stopped or on-failure[:N]", path=path, app=name, key="restart")

    ports = _parse_ports(name, data.get("ports"), path=path)
    env = _parse_env(name, data, path=path, base=base)
    volumes = get("volumes", list, [])
    for i, volume in enumerate(volumes):
        if not isinstance(volume, str) or not re.fullmatch(r"^[^:]+:/[^:]*(:(ro|rw))?$", volume):
            raise ConfigError("must be 'SOURCE:/container/path[:ro|:rw]'", path=path, app=name, key=f"volumes[{i}]")
    labels = get("labels", dict, {})
    for key, value in labels.items():
        if not isinstance(value, str):
            raise ConfigError("label values must be strings", path=path, app=name, key=f"labels.{key}")
        if key.startswith("deployer."):
            raise ConfigError("labels starting with 'deployer.' are reserved", path=path, app=name,
                              key=f"labels.{key}")
    command = get("command", list, None)
    if command is not None and not all(isinstance(c, str) for c in command):
        raise ConfigError("must be a list of strings", path=path, app=name, key="command")
    hooks_dir = data.get("hooks_dir")

    return AppConfig(
        name=name,
        image=image,
        ports=ports,
        health=_parse_health(name, data.get("health", {}), ports, path=path),
        repository=repository,
        tag_pattern=tag_pattern,
        prereleases=get("prereleases", bool, False),
        bind=bind,
        drain_seconds=_non_negative(data, "drain_seconds", 10.0, path=path, key="drain_seconds", app=name),
        stop_timeout=int(_non_negative(data, "stop_timeout", 10, path=path, key="stop_timeout", app=name)),
        restart=restart,
        env=env,
        volumes=tuple(volumes),
        labels=dict(labels),
        command=tuple(command) if command is not None else None,
        hooks_dir=_path(hooks_dir, base, path=path, key="hooks_dir", app=name) if hooks_dir is not None else None,
        asset=(_parse_asset(name, data["asset"], path=path, base=base, environ=environ,
                            secret_env_names=secret_env_names) if "asset" in data else None),
        maintenance_page=_maintenance_page(name, data, path=path, base=base),
        status_port=(_port(data["status_port"], path=path, key="status_port", app=name)
                     if "status_port" in data else None),
        watchdog=_parse_watchdog(name, data.get("watchdog", {}), path=path),
        cluster=get("cluster", bool, False),
    )


def _parse_host_bound_app(name: str, data: Mapping[str, Any], *, path: Path, base: Path) -> AppConfig:
    """An app that listens on the host itself: only its tcp ports and its page; nothing to deploy."""
    _only_keys(data, {"host_bound", "ports", "maintenance_page"}, path=path, where=None, app=name)
    ports = []
    for where, entry in _port_tables(name, data.get("ports"), {"external", "protocol"}, path=path):
        if entry.get("protocol", "tcp") != "tcp":
            raise ConfigError("must be 'tcp': a host-bound app's ports get the maintenance page, which is HTTP",
                              path=path, app=name, key=f"{where}.protocol")
        external = _port(entry.get("external"), path=path, key=f"{where}.external", app=name)
        ports.append(PortMapping(external=external, container=external, protocol="tcp", blue=0, green=0))
    if len({p.external for p in ports}) != len(ports):
        raise ConfigError("a port is listed twice", path=path, app=name, key="ports")
    return AppConfig(name=name, image="", ports=tuple(ports),
                     health=HealthCheck(type="tcp", port=ports[0].external), host_bound=True,
                     maintenance_page=_maintenance_page(name, data, path=path, base=base))


MAX_PAGE_BYTES = 1024 * 1024


def _maintenance_page(app: str, data: Mapping[str, Any], *, path: Path, base: Path) -> Path | None:
    if "maintenance_page" not in data:
        return None
    page = _path(data["maintenance_page"], base, path=path, key="maintenance_page", app=app)
    try:
        size = page.stat().st_size
        with page.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read {page}: {exc.strerror}", path=path, app=app, key="maintenance_page") from None
    if size > MAX_PAGE_BYTES:
        raise ConfigError("is larger than 1 MiB; a maintenance page should load fast", path=path, app=app,
                          key="maintenance_page")
    return page


def _parse_watchdog(app: str, data: Any, *, path: Path) -> WatchdogConfig:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, app=app, key="watchdog")
    _only_keys(data, {"enabled", "interval", "failures", "recoveries"}, path=path, where="watchdog", app=app)
    counts = {}
    for name in ("failures", "recoveries"):
        value = data.get(name, getattr(WatchdogConfig, name))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("must be a whole number of at least 1", path=path, app=app, key=f"watchdog.{name}")
        counts[name] = value
    return WatchdogConfig(
        enabled=_get(data, "enabled", bool, True, path=path, key="watchdog.enabled", app=app),
        interval=_positive(data, "interval", WatchdogConfig.interval, path=path, key="watchdog.interval", app=app),
        **counts,
    )


def _port(value: Any, *, path: Path, key: str, app: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError("must be a port number from 1 to 65535", path=path, app=app, key=key)
    return value


def _parse_asset(app: str, data: Any, *, path: Path, base: Path, environ: Mapping[str, str],
                 secret_env_names: set[str]) -> AssetConfig:
    where = f"apps.{app}.asset"
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, app=app, key="asset")
    _only_keys(data, {"name", "token", "token_file", "token_env", "max_bytes"}, path=path, where="asset", app=app)
    name = _get(data, "name", str, None, path=path, key="asset.name", app=app)
    if not name or not ASSET_NAME_RE.fullmatch(name):
        raise ConfigError("must be the file name of a release asset, e.g. image.tar", path=path, app=app,
                          key="asset.name")
    max_bytes = data.get("max_bytes", AssetConfig.max_bytes)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigError("must be a whole number of bytes, at least 1", path=path, app=app, key="asset.max_bytes")
    token = read_secret(data, "token", path=path, base=base, environ=environ, where=where,
                        secret_env_names=secret_env_names, required=False)
    return AssetConfig(name=name, token=token, max_bytes=max_bytes)


def _parse_server(data: Any, *, path: Path, base: Path, environ: Mapping[str, str],
                  secret_env_names: set[str]) -> ServerConfig:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, key="server")
    allowed = {"listen", "workers", "max_body_bytes", "github_secret", "github_secret_file", "github_secret_env",
               "operators", "job_timeout", "github_api", "user", "group", "audit_token", "audit_token_file",
               "audit_token_env"}
    _only_keys(data, allowed, path=path, where="server")
    key = lambda k: f"server.{k}"  # noqa: E731
    defaults = ServerConfig()

    listen = _get(data, "listen", str, defaults.listen, path=path, key=key("listen"))
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        port_number = int(port)
    except ValueError:
        port_number = 0
    if not sep or not 1 <= port_number <= 65535:
        raise ConfigError("must be ADDRESS:PORT with an IP address, e.g. 127.0.0.1:8000", path=path,
                          key=key("listen"))

    workers = data.get("workers", defaults.workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 2:
        raise ConfigError("must be a whole number of at least 2, so one slow request never holds up the others",
                          path=path, key=key("workers"))
    max_body = data.get("max_body_bytes", defaults.max_body_bytes)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1024:
        raise ConfigError("must be a whole number of bytes, at least 1024", path=path, key=key("max_body_bytes"))

    github_api = _get(data, "github_api", str, defaults.github_api, path=path, key=key("github_api"))
    if not re.fullmatch(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$", github_api):
        raise ConfigError("must be an http(s) URL such as https://api.github.com", path=path, key=key("github_api"))

    accounts = {}
    for name in ("user", "group"):
        value = _get(data, name, str, None, path=path, key=key(name))
        if value is not None and not ACCOUNT_RE.fullmatch(value):
            raise ConfigError("must be a user or group name", path=path, key=key(name))
        accounts[name] = value

    github_secret = read_secret(data, "github_secret", path=path, base=base, environ=environ, where="server",
                                secret_env_names=secret_env_names, required=False)
    audit_token = read_secret(data, "audit_token", path=path, base=base, environ=environ, where="server",
                              secret_env_names=secret_env_names, required=False)
    if audit_token is not None and len(audit_token) < MIN_OPERATOR_SECRET:
        raise ConfigError(f"the token is shorter than {MIN_OPERATOR_SECRET} characters; "
                          "make one with: openssl rand -hex 32", path=path, key=key("audit_token"))

    operators_data = data.get("operators", {})
    if not isinstance(operators_data, dict):
        raise ConfigError("must be a table of [server.operators.KEY_ID] tables", path=path, key=key("operators"))
    operators = {}
    for key_id, entry in operators_data.items():
        where = f"server.operators.{key_id}"
        if not KEY_ID_RE.fullmatch(key_id):
            raise ConfigError("key ids are 1 to 64 letters, digits, '.', '_' or '-'", path=path, key=where)
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", path=path, key=where)
        _only_keys(entry, {"secret", "secret_file", "secret_env"}, path=path, where=where)
        secret = read_secret(entry, "secret", path=path, base=base, environ=environ, where=where,
                             secret_env_names=secret_env_names)
        if len(secret) < MIN_OPERATOR_SECRET:
            raise ConfigError(f"the secret is shorter than {MIN_OPERATOR_SECRET} characters; "
                              "make one with: openssl rand -hex 32", path=path, key=where)
        operators[key_id] = OperatorKey(key_id=key_id, secret=secret)

    return ServerConfig(
        listen=listen,
        workers=workers,
        max_body_bytes=max_body,
        github_secret=github_secret,
        operators=operators,
        audit_token=audit_token,
        job_timeout=_positive(data, "job_timeout", defaults.job_timeout, path=path, key=key("job_timeout")),
        github_api=github_api.rstrip("/"),
        user=accounts["user"],
        group=accounts["group"],
    )


def _port_tables(app: str, data: Any, allowed: set[str], *, path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The [[apps.NAME.ports]] entries, each a table with only `allowed` keys, with its place for errors."""
    if not isinstance(data, list) or not data:
        raise ConfigError("at least one [[apps.NAME.ports]] entry is required", path=path, app=app, key="ports")
    tables = []
    for i, entry in enumerate(data):
        where = f"ports[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", path=path, app=app, key=where)
        _only_keys(entry, allowed, path=path, where=where, app=app)
        tables.append((where, entry))
    return tables


def _parse_ports(app: str, data: Any, *, path: Path) -> tuple[PortMapping, ...]:
    ports = []
    for where, entry in _port_tables(app, data, {"external", "container", "protocol", "blue", "green"}, path=path):
        values = {key: _port(entry.get(key), path=path, key=f"{where}.{key}", app=app)
                  for key in ("external", "container", "blue", "green")}
        protocol = entry.get("protocol", "tcp")
        if protocol not in PROTOCOLS:
            raise ConfigError("must be 'tcp' or 'udp'", path=path, app=app, key=f"{where}.protocol")
        host_ports = [values["external"], values["blue"], values["green"]]
        if len(set(host_ports)) != 3:
            raise ConfigError("external, blue and green must be three different host ports",
                              path=path, app=app, key=where)
        ports.append(PortMapping(protocol=protocol, **values))
    seen: set[tuple[int, str]] = set()
    for port in ports:
        if (port.container, port.protocol) in seen:
            raise ConfigError(f"container port {port.container}/{port.protocol} is listed twice",
                              path=path, app=app, key="ports")
        seen.add((port.container, port.protocol))
    return tuple(ports)


def _parse_health(app: str, data: Any, ports: tuple[PortMapping, ...], *, path: Path) -> HealthCheck:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, app=app, key="health")
    allowed = {"type", "port", "path", "expect_status", "interval", "timeout", "successes", "deadline"}
    _only_keys(data, allowed, path=path, where="health", app=app)
    kind = data.get("type", "http")
    if kind not in ("http", "tcp"):
        raise ConfigError("must be 'http' or 'tcp'", path=path, app=app, key="health.type")
    tcp_ports = [p.container for p in ports if p.protocol == "tcp"]
    if not tcp_ports:
        raise ConfigError("a health check needs a tcp port in [[apps.NAME.ports]]", path=path, app=app,
                          key="health.port")
    port = data.get("port", tcp_ports[0])
    if port not in tcp_ports:
        raise ConfigError(f"must be one of the app's tcp container ports {tcp_ports}", path=path, app=app,
                          key="health.port")
    check_path = data.get("path", "/")
    if not isinstance(check_path, str) or not check_path.startswith("/") or any(c in check_path for c in " \r\n"):
        raise ConfigError("must be an absolute URL path", path=path, app=app, key="health.path")
    expect = data.get("expect_status", 200)
    if isinstance(expect, bool) or not isinstance(expect, int) or not 100 <= expect <= 599:
        raise ConfigError("must be an HTTP status code", path=path, app=app, key="health.expect_status")
    successes = data.get("successes", 3)
    if isinstance(successes, bool) or not isinstance(successes, int) or successes < 1:
        raise ConfigError("must be a whole number of at least 1", path=path, app=app, key="health.successes")
    health = HealthCheck(
        type=kind,
        port=port,
        path=check_path,
        expect_status=expect,
        interval=_positive(data, "interval", 1.0, path=path, key="health.interval", app=app),
        timeout=_positive(data, "timeout", 2.0, path=path, key="health.timeout", app=app),
        successes=successes,
        deadline=_positive(data, "deadline", 60.0, path=path, key="health.deadline", app=app),
    )
    if health.deadline < health.interval * (health.successes - 1):
        raise ConfigError("is shorter than interval x (successes - 1): the gate could never pass",
                          path=path, app=app, key="health.deadline")
    return health


def _parse_env(app: str, data: Mapping[str, Any], *, path: Path, base: Path) -> dict[str, str]:
    """Env files first, in order, then `env` on top, so the config file has the last word."""
    env: dict[str, str] = {}
    files = data.get("env_files", [])
    if not isinstance(files, list):
        raise ConfigError("must be a list of file paths", path=path, app=app, key="env_files")
    for i, name in enumerate(files):
        key = f"env_files[{i}]"
        env_path = _path(name, base, path=path, key=key, app=app)
        try:
            text = env_path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {env_path}: {exc.strerror}", path=path, app=app, key=key) from None
        try:
            env.update(parse_env_file(text))
        except ValueError as exc:
            raise ConfigError(f"{env_path}: {exc}", path=path, app=app, key=key) from None
    inline = data.get("env", {})
    if not isinstance(inline, dict):
        raise ConfigError("must be a table of NAME = \"value\"", path=path, app=app, key="env")
    for name, value in inline.items():
        if not ENV_NAME_RE.fullmatch(name):
            raise ConfigError("not a valid environment variable name", path=path, app=app, key=f"env.{name}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError("must be a string or a number", path=path, app=app, key=f"env.{name}")
        env[name] = str(value)
    return env


def parse_env_file(text: str) -> dict[str, str]:
    """Docker's env-file format: NAME=value lines, '#' comments, no shell expansion or quoting."""
    env = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"line {number}: expected NAME=value")
        env[name] = value
    return env


def _check_port_conflicts(apps: Mapping[str, AppConfig], *, path: Path,
                          maintenance_port: int | None = None) -> None:
    """A host port belongs to one role of one app: two owners would steal each other's traffic."""
    owners: dict[tuple[int, str], str] = {}
    for app in apps.values():
        for port in app.ports:
            for role in ("external",) if app.host_bound else ("external", "blue", "green"):
                key = (getattr(port, role), port.protocol)
                if key in owners:
                    raise ConfigError(f"host port {key[0]}/{key[1]} is already used as {owners[key]}",
                                      path=path, app=app.name, key="ports")
                owners[key] = f"the {role} port of app {app.name!r}"
    for app in apps.values():
        if app.status_port is not None:
            if (app.status_port, "tcp") in owners:
                raise ConfigError(f"host port {app.status_port}/tcp is already used as "
                                  f"{owners[(app.status_port, 'tcp')]}", path=path, app=app.name, key="status_port")
            owners[(app.status_port, "tcp")] = f"the status port of app {app.name!r}"
    if maintenance_port is not None and (maintenance_port, "tcp") in owners:
        raise ConfigError(f"port {maintenance_port}/tcp is already used as {owners[(maintenance_port, 'tcp')]}",
                          path=path, key="deployer.maintenance_port")


def _check_repositories(apps: Mapping[str, AppConfig], *, path: Path) -> None:
    seen: dict[str, str] = {}
    for app in apps.values():
        if app.repository:
            key = app.repository.lower()
            if key in seen:
                raise ConfigError(f"repository {app.repository} already triggers app {seen[key]!r}",
                                  path=path, app=app.name, key="repository")
            seen[key] = app.name


# --- small typed getters -------------------------------------------------------------------------


def _only_keys(data: Mapping[str, Any], allowed: set[str], *, path: Path, where: str | None,
               app: str | None = None) -> None:
    for key in data:
        if key not in allowed:
            full = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown key (allowed: {', '.join(sorted(allowed))})", path=path, app=app, key=full)


def _get(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any, *, path: Path, key: str,
         app: str | None = None) -> Any:
    if name not in data:
        return default
    value = data[name]
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"must be of type {_kind_name(kind)}", path=path, app=app, key=key)
    if not isinstance(value, kind):
        raise ConfigError(f"must be of type {_kind_name(kind)}", path=path, app=app, key=key)
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _number(data: Mapping[str, Any], name: str, default: float, *, path: Path, key: str, app: str | None) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("must be a number", path=path, app=app, key=key)
    return value


def _positive(data: Mapping[str, Any], name: str, default: float, *, path: Path, key: str,
              app: str | None = None) -> float:
    value = _number(data, name, default, path=path, key=key, app=app)
    if value <= 0:
        raise ConfigError("must be greater than 0", path=path, app=app, key=key)
    return value


def _non_negative(data: Mapping[str, Any], name: str, default: float, *, path: Path, key: str,
                  app: str | None = None) -> float:
    value = _number(data, name, default, path=path, key=key, app=app)
    if value < 0:
        raise ConfigError("must not be negative", path=path, app=app, key=key)
    return value


def _path(value: Any, base: Path, *, path: Path, key: str, app: str | None = None) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a path", path=path, app=app, key=key)
    candidate = Path(value)
    return candidate if candidate.is_absolute() else (base / candidate)
