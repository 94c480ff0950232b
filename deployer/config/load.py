"""Read the TOML config once and build the model: paths made absolute, secrets resolved, every value checked.

Nothing else in the project reads the environment. Two loaders: `load` for the deployer and its worker
(everything), `load_receiver` for the unprivileged webhook receiver, which never opens a registry
password file, an asset token or an app's env files, so those can stay readable by root alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from deployer.config.cluster import check_cluster_apps, parse_cluster
from deployer.config.fleet import parse_fleet, release_tables
from deployer.config.fields import (
    ACCOUNT_RE,
    APP_NAME_RE,
    ASSET_NAME_RE,
    BRIDGE_RE,
    CHAIN_PREFIX_RE,
    ENV_NAME_RE,
    KEY_ID_RE,
    REPOSITORY_RE,
    RESTART_RE,
    absolute_path,
    duration,
    hook_id,
    integer,
    matching,
    only_keys,
    port_number,
    table,
    typed,
)
from deployer.config.model import (
    IMAGE_RE,
    PROTOCOLS,
    AppConfig,
    AssetConfig,
    Config,
    HealthCheck,
    OperatorKey,
    PortMapping,
    ReceiverApp,
    ReceiverConfig,
    RegistryAuth,
    ServerConfig,
    Settings,
    WatchdogConfig,
)
from deployer.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/deployer/deployer.toml")
CONFIG_ENV = "DEPLOYER_CONFIG"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
MIN_OPERATOR_SECRET = 16
MAX_PAGE_BYTES = 1024 * 1024
TOP_LEVEL_KEYS = {"deployer", "apps", "registries", "server", "cluster", "fleet"}
# What gunicorn keeps of serve's environment besides the receiver's own secrets: none of these is a secret.
RECEIVER_PLAIN_ENV = frozenset({"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH"})


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
    path = _absolute(path)
    return parse(_read_toml(path), path=path, environ=os.environ if environ is None else environ)


def load_receiver(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> ReceiverConfig:
    """What the webhook receiver needs, and nothing it must not hold.

    It reads [deployer], [server] and each app's release policy and GitHub secret; it never opens a
    registry password file, an asset token or an env file, so those can be root's alone (0600).
    """
    path = _absolute(path)
    return parse_receiver(_read_toml(path), path=path, environ=os.environ if environ is None else environ)


def _absolute(path: str | os.PathLike[str]) -> Path:
    """The config's own path made absolute, so every path in it resolves the same from any working folder."""
    return Path(os.path.abspath(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config file not found", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path=path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None


def parse(data: Mapping[str, Any], *, path: Path, environ: Mapping[str, str]) -> Config:
    path = _absolute(path)
    base = path.parent
    only_keys(data, TOP_LEVEL_KEYS, path=path, where=None)
    settings = _parse_settings(data.get("deployer", {}), path=path, base=base, environ=environ)
    secret_env_names: set[str] = set()
    registries = _parse_registries(data.get("registries", {}), path=path, base=base, environ=environ,
                                   secret_env_names=secret_env_names)
    receiver_env_names: set[str] = set()
    apps = {name: _parse_app(name, value, path=path, base=base, environ=environ, secret_env_names=secret_env_names,
                             receiver_env_names=receiver_env_names)
            for name, value in _apps_table(data, path=path).items()}
    _check_port_conflicts(apps, path=path, maintenance_port=settings.maintenance_port)
    _check_repositories(apps, path=path)
    server = _parse_server(data.get("server", {}), path=path, base=base, environ=environ,
                           secret_env_names=receiver_env_names)
    cluster = parse_cluster(data["cluster"], path=path) if "cluster" in data else None
    check_cluster_apps(cluster, {name: app.cluster for name, app in apps.items()}, path=path)
    fleet = None
    if "fleet" in data:
        def fleet_secret(entry: Mapping[str, Any], name: str, where: str) -> str:
            return read_secret(entry, name, path=path, base=base, environ=environ, where=where,
                               secret_env_names=secret_env_names)
        fleet = parse_fleet(data["fleet"], path=path, read_secret=fleet_secret,
                            releases=_fleet_releases(data, path=path, base=base, environ=environ,
                                                     secret_env_names=receiver_env_names))
        _check_fleet_apps(fleet.apps, apps, path=path)
        _check_repositories({**apps, **fleet.releases}, path=path)
    return Config(path=path, settings=settings, apps=apps, registries=registries,
                  secret_env_names=frozenset(secret_env_names | receiver_env_names), raw=data, server=server,
                  receiver_env_names=frozenset(receiver_env_names), cluster=cluster, fleet=fleet)


def parse_receiver(data: Mapping[str, Any], *, path: Path, environ: Mapping[str, str]) -> ReceiverConfig:
    path = _absolute(path)
    base = path.parent
    only_keys(data, TOP_LEVEL_KEYS, path=path, where=None)
    settings = _parse_settings(data.get("deployer", {}), path=path, base=base, environ=environ)
    secret_env_names: set[str] = set()
    apps = {name: _parse_receiver_app(name, value, path=path, base=base, environ=environ,
                                      secret_env_names=secret_env_names)
            for name, value in _apps_table(data, path=path).items()}
    fleet_releases = _fleet_releases(data, path=path, base=base, environ=environ, secret_env_names=secret_env_names)
    _check_fleet_apps(tuple(fleet_releases), apps, path=path)
    apps.update(fleet_releases)
    _check_repositories(apps, path=path)
    server = _parse_server(data.get("server", {}), path=path, base=base, environ=environ,
                           secret_env_names=secret_env_names)
    return ReceiverConfig(path=path, settings=settings, apps=apps, server=server,
                          secret_env_names=frozenset(secret_env_names))


def receiver_environment(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """gunicorn's whole environment: the locale, PATH, the config's path and the receiver's own *_env secrets.

    Never the worker's registry passwords, asset tokens or anything else the root environment holds.
    """
    environ = os.environ if environ is None else environ
    kept = RECEIVER_PLAIN_ENV | config.receiver_env_names
    env = {name: environ[name] for name in sorted(kept) if name in environ}
    env[CONFIG_ENV] = str(config.path)
    return env


def _fleet_releases(data: Mapping[str, Any], *, path: Path, base: Path, environ: Mapping[str, str],
                    secret_env_names: set[str]) -> dict[str, ReceiverApp]:
    """A controller's receiver knows a fleet app by its release policy alone: its releases queue a rollout."""
    return {name: ReceiverApp(name=name, fleet=True, **_release_policy(name, entry, path=path, base=base,
                                                                       environ=environ,
                                                                       secret_env_names=secret_env_names))
            for name, entry in release_tables(data, path=path).items()}


def _check_fleet_apps(fleet_apps: tuple[str, ...], apps: Mapping[str, Any], *, path: Path) -> None:
    """A fleet app runs on the fleet's hosts, not here: one name must not mean both."""
    both = sorted(set(fleet_apps) & set(apps))
    if both:
        raise ConfigError(f"app {both[0]!r} is also configured under [apps]: a controller rolls a fleet app out "
                          "to its hosts and runs no copy of its own", path=path, key="fleet.apps")


def _apps_table(data: Mapping[str, Any], *, path: Path) -> dict[str, Any]:
    apps_data = data.get("apps", {})
    if "fleet" in data and apps_data == {}:
        return {}  # a controller only: its apps run on the fleet's hosts
    if not isinstance(apps_data, dict) or not apps_data:
        raise ConfigError("at least one app must be configured under [apps.NAME]", path=path, key="apps")
    return apps_data


# --- sections ------------------------------------------------------------------------------------


def _parse_settings(data: Any, *, path: Path, base: Path, environ: Mapping[str, str]) -> Settings:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, key="deployer")
    allowed = {"state_dir", "hooks_dir", "hook_timeout", "lock_wait", "chain_prefix", "network", "bridge",
               "docker_host", "iptables_wait", "maintenance_port", "backend"}
    only_keys(data, allowed, path=path, where="deployer")
    key = lambda k: f"deployer.{k}"  # noqa: E731
    prefix = typed(data, "chain_prefix", str, "DEPLOYER", path=path, key=key("chain_prefix"))
    if not CHAIN_PREFIX_RE.fullmatch(prefix):
        raise ConfigError("must be 1 to 8 uppercase letters or digits, starting with a letter",
                          path=path, key=key("chain_prefix"))
    if prefix in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD") or prefix.startswith("DOCKER"):
        raise ConfigError("must not name a built-in chain or Docker's chains: the deployer owns every chain "
                          "it names", path=path, key=key("chain_prefix"))
    bridge = typed(data, "bridge", str, "deployer0", path=path, key=key("bridge"))
    if not BRIDGE_RE.fullmatch(bridge):
        raise ConfigError("must be a Linux interface name of at most 15 characters", path=path, key=key("bridge"))
    network = typed(data, "network", str, "deployer", path=path, key=key("network"))
    if not re.fullmatch(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", network):
        raise ConfigError("must be a Docker network name", path=path, key=key("network"))
    backend = typed(data, "backend", str, "iptables", path=path, key=key("backend"))
    if backend not in BACKENDS:
        raise ConfigError(f'must be "iptables" or "nftables", not {backend!r}', path=path, key=key("backend"))
    return Settings(
        state_dir=absolute_path(data.get("state_dir", "state"), base, path=path, key=key("state_dir")),
        hooks_dir=absolute_path(data.get("hooks_dir", "hooks"), base, path=path, key=key("hooks_dir")),
        hook_timeout=duration(data, "hook_timeout", 60.0, path=path, key=key("hook_timeout")),
        lock_wait=duration(data, "lock_wait", 0.0, path=path, key=key("lock_wait"), zero=True),
        chain_prefix=prefix,
        network=network,
        bridge=bridge,
        docker_host=(typed(data, "docker_host", str, None, path=path, key=key("docker_host"))
                     or environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST),
        iptables_wait=int(duration(data, "iptables_wait", 10, path=path, key=key("iptables_wait"))),
        maintenance_port=port_number(data.get("maintenance_port", Settings.maintenance_port), path=path,
                                     key=key("maintenance_port")),
        backend=backend,
    )


BACKENDS = ("iptables", "nftables")


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
        only_keys(entry, {"username", "password", "password_file", "password_env"}, path=path, where=where)
        username = typed(entry, "username", str, None, path=path, key=f"{where}.username")
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
        secret_path = absolute_path(entry[file_key], base, path=path, key=f"{where}.{file_key}")
        try:
            value = secret_path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {secret_path}: {exc.strerror}",
                              path=path, key=f"{where}.{file_key}") from None
    elif env_key in entry:
        var = typed(entry, env_key, str, None, path=path, key=f"{where}.{env_key}")
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


APP_KEYS = {"image", "ports", "health", "repository", "tag_pattern", "prereleases", "bind", "drain_seconds",
            "stop_timeout", "restart", "env", "env_files", "volumes", "labels", "command", "hooks_dir", "asset",
            "maintenance_page", "status_port", "host_bound", "watchdog", "github_secret", "github_secret_file",
            "github_secret_env", "github_hook_id", "cluster", "canary", "canary_sticky", "canary_bake"}
HOST_BOUND_APP_KEYS = {"host_bound", "ports", "maintenance_page"}


def _app_data(name: str, data: Any, *, path: Path) -> tuple[dict[str, Any], bool]:
    """The app's table and whether it is host-bound; its keys checked against what that kind takes."""
    if not APP_NAME_RE.fullmatch(name):
        raise ConfigError("app names are 1 to 19 lowercase letters, digits or '-', starting with a letter",
                          path=path, app=name)
    data = table(data, path=path, key=None, app=name)
    host_bound = typed(data, "host_bound", bool, False, path=path, key="host_bound", app=name)
    only_keys(data, HOST_BOUND_APP_KEYS if host_bound else APP_KEYS, path=path, where=None, app=name)
    return data, host_bound


def _release_policy(name: str, data: Mapping[str, Any], *, path: Path, base: Path, environ: Mapping[str, str],
                    secret_env_names: set[str]) -> dict[str, Any]:
    """The keys the receiver decides by: which repository deploys the app, which tags, and who signs for it."""
    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return typed(data, key, kind, default, path=path, key=key, app=name)

    repository = get("repository", str, None)
    if repository is not None:
        matching(repository, REPOSITORY_RE, "must be a GitHub repository as owner/name", path=path, app=name,
                 key="repository")
    tag_pattern = get("tag_pattern", str, None)
    if tag_pattern is not None:
        try:
            re.compile(tag_pattern)
        except re.error as exc:
            raise ConfigError(f"not a valid regular expression: {exc}", path=path, app=name,
                              key="tag_pattern") from None
    github_secret = read_secret(data, "github_secret", path=path, base=base, environ=environ, where=f"apps.{name}",
                                secret_env_names=secret_env_names, required=False)
    github_hook_id = (hook_id(data["github_hook_id"], path=path, key="github_hook_id", app=name)
                      if "github_hook_id" in data else None)
    if (github_secret is not None or github_hook_id is not None) and repository is None:
        given = next(k for k in ("github_secret_file", "github_secret_env", "github_hook_id") if k in data)
        raise ConfigError("needs repository: only deliveries from the app's own repository use it", path=path,
                          app=name, key=given)
    return {"repository": repository, "tag_pattern": tag_pattern, "prereleases": get("prereleases", bool, False),
            "github_secret": github_secret, "github_hook_id": github_hook_id}


def _parse_receiver_app(name: str, data: Any, *, path: Path, base: Path, environ: Mapping[str, str],
                        secret_env_names: set[str]) -> ReceiverApp:
    data, host_bound = _app_data(name, data, path=path)
    if host_bound:
        bound = _parse_host_bound_app(name, data, path=path, base=base)
        return ReceiverApp(name=name, host_bound=True, ports=bound.ports, maintenance_page=bound.maintenance_page)
    asset = (_parse_asset(name, data["asset"], path=path, base=base, environ=environ,
                          secret_env_names=secret_env_names, with_token=False) if "asset" in data else None)
    return ReceiverApp(name=name, asset=asset, ports=_parse_ports(name, data.get("ports"), path=path),
                       maintenance_page=_maintenance_page(name, data, path=path, base=base),
                       **_release_policy(name, data, path=path, base=base, environ=environ,
                                         secret_env_names=secret_env_names))


def _parse_app(name: str, data: Any, *, path: Path, base: Path, environ: Mapping[str, str],
               secret_env_names: set[str], receiver_env_names: set[str]) -> AppConfig:
    data, host_bound = _app_data(name, data, path=path)
    if host_bound:
        return _parse_host_bound_app(name, data, path=path, base=base)

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return typed(data, key, kind, default, path=path, key=key, app=name)

    image = get("image", str, None)
    if not image:
        raise ConfigError("is required", path=path, app=name, key="image")
    if "@" in image or not IMAGE_RE.fullmatch(image):
        raise ConfigError("must be an image repository without tag or digest, e.g. registry.example:5000/app",
                          path=path, app=name, key="image")
    policy = _release_policy(name, data, path=path, base=base, environ=environ, secret_env_names=receiver_env_names)

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
        bind=bind,
        drain_seconds=duration(data, "drain_seconds", 10.0, path=path, key="drain_seconds", app=name, zero=True),
        stop_timeout=int(duration(data, "stop_timeout", 10, path=path, key="stop_timeout", app=name, zero=True)),
        restart=restart,
        env=env,
        volumes=tuple(volumes),
        labels=dict(labels),
        command=tuple(command) if command is not None else None,
        hooks_dir=(absolute_path(hooks_dir, base, path=path, key="hooks_dir", app=name)
                   if hooks_dir is not None else None),
        asset=(_parse_asset(name, data["asset"], path=path, base=base, environ=environ,
                            secret_env_names=secret_env_names) if "asset" in data else None),
        maintenance_page=_maintenance_page(name, data, path=path, base=base),
        status_port=(port_number(data["status_port"], path=path, key="status_port", app=name)
                     if "status_port" in data else None),
        watchdog=_parse_watchdog(name, data.get("watchdog", {}), path=path),
        cluster=get("cluster", bool, False),
        canary=(integer(data["canary"], minimum=1, maximum=99, path=path, key="canary", app=name,
                        message="must be the canary's share of new connections, a whole percentage from 1 to 99")
                if "canary" in data else None),
        canary_sticky=typed(data, "canary_sticky", bool, False, path=path, key="canary_sticky", app=name),
        canary_bake=(duration(data, "canary_bake", 0.0, path=path, key="canary_bake", app=name)
                     if "canary_bake" in data else None),
        **policy,
    )


def _parse_host_bound_app(name: str, data: Mapping[str, Any], *, path: Path, base: Path) -> AppConfig:
    """An app that listens on the host itself: only its tcp ports and its page; nothing to deploy."""
    ports = []
    for where, entry in _port_tables(name, data.get("ports"), {"external", "protocol"}, path=path):
        if entry.get("protocol", "tcp") != "tcp":
            raise ConfigError("must be 'tcp': a host-bound app's ports get the maintenance page, which is HTTP",
                              path=path, app=name, key=f"{where}.protocol")
        external = port_number(entry.get("external"), path=path, key=f"{where}.external", app=name)
        ports.append(PortMapping(external=external, container=external, protocol="tcp", blue=0, green=0))
    if len({p.external for p in ports}) != len(ports):
        raise ConfigError("a port is listed twice", path=path, app=name, key="ports")
    return AppConfig(name=name, image="", ports=tuple(ports),
                     health=HealthCheck(type="tcp", port=ports[0].external), host_bound=True,
                     maintenance_page=_maintenance_page(name, data, path=path, base=base))


def _maintenance_page(app: str, data: Mapping[str, Any], *, path: Path, base: Path) -> Path | None:
    if "maintenance_page" not in data:
        return None
    page = absolute_path(data["maintenance_page"], base, path=path, key="maintenance_page", app=app)
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
    only_keys(data, {"enabled", "interval", "failures", "recoveries"}, path=path, where="watchdog", app=app)
    counts = {name: integer(data.get(name, getattr(WatchdogConfig, name)), minimum=1, path=path, app=app,
                            key=f"watchdog.{name}")
              for name in ("failures", "recoveries")}
    return WatchdogConfig(
        enabled=typed(data, "enabled", bool, True, path=path, key="watchdog.enabled", app=app),
        interval=duration(data, "interval", WatchdogConfig.interval, path=path, key="watchdog.interval", app=app),
        **counts,
    )


def _parse_asset(app: str, data: Any, *, path: Path, base: Path, environ: Mapping[str, str],
                 secret_env_names: set[str], with_token: bool = True) -> AssetConfig:
    """`with_token=False` (the receiver): the asset's name is checked, its token is not read."""
    where = f"apps.{app}.asset"
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, app=app, key="asset")
    only_keys(data, {"name", "token", "token_file", "token_env", "max_bytes"}, path=path, where="asset", app=app)
    name = typed(data, "name", str, None, path=path, key="asset.name", app=app)
    if not name or not ASSET_NAME_RE.fullmatch(name):
        raise ConfigError("must be the file name of a release asset, e.g. image.tar", path=path, app=app,
                          key="asset.name")
    max_bytes = integer(data.get("max_bytes", AssetConfig.max_bytes), minimum=1, path=path, app=app,
                        key="asset.max_bytes", message="must be a whole number of bytes, at least 1")
    token = read_secret(data, "token", path=path, base=base, environ=environ, where=where,
                        secret_env_names=secret_env_names, required=False) if with_token else None
    return AssetConfig(name=name, token=token, max_bytes=max_bytes)


def _parse_server(data: Any, *, path: Path, base: Path, environ: Mapping[str, str],
                  secret_env_names: set[str]) -> ServerConfig:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, key="server")
    allowed = {"listen", "workers", "max_body_bytes", "github_secret", "github_secret_file", "github_secret_env",
               "operators", "job_timeout", "github_api", "user", "group", "audit_token", "audit_token_file",
               "audit_token_env"}
    only_keys(data, allowed, path=path, where="server")
    key = lambda k: f"server.{k}"  # noqa: E731
    defaults = ServerConfig()

    listen = typed(data, "listen", str, defaults.listen, path=path, key=key("listen"))
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        listen_port = int(port_text)
    except ValueError:
        listen_port = 0
    if not sep or not 1 <= listen_port <= 65535:
        raise ConfigError("must be ADDRESS:PORT with an IP address, e.g. 127.0.0.1:8000", path=path,
                          key=key("listen"))

    workers = integer(data.get("workers", defaults.workers), minimum=2, path=path, key=key("workers"),
                      message="must be a whole number of at least 2, so one slow request never holds up the others")
    max_body = integer(data.get("max_body_bytes", defaults.max_body_bytes), minimum=1024, path=path,
                       key=key("max_body_bytes"), message="must be a whole number of bytes, at least 1024")

    github_api = typed(data, "github_api", str, defaults.github_api, path=path, key=key("github_api"))
    if not re.fullmatch(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$", github_api):
        raise ConfigError("must be an http(s) URL such as https://api.github.com", path=path, key=key("github_api"))

    accounts = {}
    for name in ("user", "group"):
        value = typed(data, name, str, None, path=path, key=key(name))
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
        only_keys(entry, {"secret", "secret_file", "secret_env"}, path=path, where=where)
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
        job_timeout=duration(data, "job_timeout", defaults.job_timeout, path=path, key=key("job_timeout")),
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
        only_keys(entry, allowed, path=path, where=where, app=app)
        tables.append((where, entry))
    return tables


def _parse_ports(app: str, data: Any, *, path: Path) -> tuple[PortMapping, ...]:
    ports = []
    for where, entry in _port_tables(app, data, {"external", "container", "protocol", "blue", "green"}, path=path):
        values = {key: port_number(entry.get(key), path=path, key=f"{where}.{key}", app=app)
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
    only_keys(data, allowed, path=path, where="health", app=app)
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
    expect = integer(data.get("expect_status", 200), minimum=100, maximum=599, path=path, app=app,
                     key="health.expect_status", message="must be an HTTP status code")
    successes = integer(data.get("successes", 3), minimum=1, path=path, app=app, key="health.successes")
    health = HealthCheck(
        type=kind,
        port=port,
        path=check_path,
        expect_status=expect,
        interval=duration(data, "interval", 1.0, path=path, key="health.interval", app=app),
        timeout=duration(data, "timeout", 2.0, path=path, key="health.timeout", app=app),
        successes=successes,
        deadline=duration(data, "deadline", 60.0, path=path, key="health.deadline", app=app),
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
        env_path = absolute_path(name, base, path=path, key=key, app=app)
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


