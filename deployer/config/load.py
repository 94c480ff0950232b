"""Read the TOML config once and build the model: paths made absolute, secrets resolved, every value checked.

Nothing else in the project reads the environment. Three loaders: `load` for the deployer and its worker
(everything), `load_receiver` for the unprivileged webhook receiver, which never opens a registry
password file, an asset token or an app's env files, so those can stay readable by root alone, and
`load_reports` for the unprivileged report loop, which reads only [deployer] and what reports deploys.
"""

from __future__ import annotations

import getpass
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.app import parse_app, parse_receiver_app, release_policy
from deployer.config.cluster import check_cluster_apps, parse_cluster
from deployer.config.console import parse_console
from deployer.config.fields import only_keys
from deployer.config.fleet import fleet_names, parse_fleet, release_tables
from deployer.config.hooks import check_hooks_dir, hooks_folders
from deployer.config.model import (
    AppConfig,
    Config,
    ConsoleConfig,
    ReceiverApp,
    ReceiverConfig,
    ReportsSetup,
    ServerConfig,
    Settings,
)
from deployer.config.registries import parse_registries
from deployer.config.reports import parse_reports
from deployer.config.secrets import read_secret
from deployer.config.server import parse_public_url, parse_server
from deployer.config.settings import parse_settings
from deployer.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/deployer/deployer.toml")
CONFIG_ENV = "DEPLOYER_CONFIG"
TOP_LEVEL_KEYS = {"deployer", "apps", "registries", "server", "cluster", "fleet", "notify", "console"}
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
    environ = os.environ if environ is None else environ
    user = environ.get("SUDO_USER") or getpass.getuser()
    return f"cli:{user}"


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, check_hooks: bool = True) -> Config:
    """Read and validate a config file; raises ConfigError naming the file, app and key.

    `check_hooks=False` leaves the hooks folders unchecked, for `deployer check`, which reports each of their
    problems on its own line beside the host's instead of stopping at the first.
    """
    path = _absolute(path)
    return parse(
        _read_toml(path), path=path, environ=os.environ if environ is None else environ, check_hooks=check_hooks
    )


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


def parse(data: Mapping[str, Any], *, path: Path, environ: Mapping[str, str], check_hooks: bool = True) -> Config:
    path = _absolute(path)
    base = path.parent
    only_keys(data, TOP_LEVEL_KEYS, path=path, where=None)
    settings = parse_settings(data.get("deployer", {}), path=path, base=base, environ=environ)
    secret_env_names: set[str] = set()
    registries = parse_registries(
        data.get("registries", {}), path=path, base=base, environ=environ, secret_env_names=secret_env_names
    )
    receiver_env_names: set[str] = set()
    apps = {
        name: parse_app(
            name,
            value,
            path=path,
            base=base,
            environ=environ,
            secret_env_names=secret_env_names,
            receiver_env_names=receiver_env_names,
        )
        for name, value in _apps_table(data, path=path).items()
    }
    _check_port_conflicts(apps, path=path, maintenance_port=settings.maintenance_port)
    _check_repositories(apps, path=path)
    if check_hooks:
        _check_hooks(settings, apps, configured="hooks_dir" in data.get("deployer", {}), path=path)
    server = parse_server(
        data.get("server", {}), path=path, base=base, environ=environ, secret_env_names=receiver_env_names
    )
    cluster = parse_cluster(data["cluster"], path=path) if "cluster" in data else None
    check_cluster_apps(cluster, {name: app.cluster for name, app in apps.items()}, path=path)
    _check_ipv6(settings, cluster, path=path)
    fleet = None
    if "fleet" in data:

        def fleet_secret(entry: Mapping[str, Any], name: str, where: str) -> str:
            return read_secret(
                entry, name, path=path, base=base, environ=environ, where=where, secret_env_names=secret_env_names
            )

        fleet = parse_fleet(
            data["fleet"],
            path=path,
            read_secret=fleet_secret,
            releases=_fleet_releases(data, path=path, base=base, environ=environ, secret_env_names=receiver_env_names),
        )
        _check_fleet_apps(fleet.apps, apps, path=path)
        _check_repositories({**apps, **fleet.releases}, path=path)
    _check_key_apps(server, {*apps, *(fleet.apps if fleet else ())}, path=path)
    report_env_names: set[str] = set()
    reports = parse_reports(data, path=path, base=base, environ=environ, secret_env_names=report_env_names)
    console = _console(data, path=path, base=base, environ=environ, secret_env_names=receiver_env_names)
    return Config(
        path=path,
        settings=settings,
        apps=apps,
        registries=registries,
        secret_env_names=frozenset(secret_env_names | receiver_env_names | report_env_names),
        raw=data,
        server=server,
        receiver_env_names=frozenset(receiver_env_names),
        reports=reports,
        report_env_names=frozenset(report_env_names),
        cluster=cluster,
        fleet=fleet,
        console=console,
    )


def _check_hooks(settings: Settings, apps: Mapping[str, AppConfig], *, configured: bool, path: Path) -> None:
    """The folders the deploys will run hooks from (`hooks_folders`), each checked: the first problem stops the load."""
    for hooks in hooks_folders(settings, apps, configured=configured):
        check_hooks_dir(hooks.folder, configured=hooks.configured, path=path, key=hooks.key, app=hooks.app)


def load_reports(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> ReportsSetup:
    """The report loop's part of the config: [deployer] (where the audit log and the queue are) and the reports.

    It runs as [server] user: it reads the GitHub tokens and the notification secrets, nothing of the worker's.
    """
    path = _absolute(path)
    data = _read_toml(path)
    environ = os.environ if environ is None else environ
    only_keys(data, TOP_LEVEL_KEYS, path=path, where=None)
    settings = parse_settings(data.get("deployer", {}), path=path, base=path.parent, environ=environ)
    names: set[str] = set()
    reports = parse_reports(data, path=path, base=path.parent, environ=environ, secret_env_names=names)
    server = data.get("server", {})
    github_api = server.get("github_api", ServerConfig.github_api) if isinstance(server, Mapping) else None
    if not isinstance(github_api, str):
        raise ConfigError("must be an http(s) URL such as https://api.github.com", path=path, key="server.github_api")
    public_url = parse_public_url(server, path=path) if isinstance(server, Mapping) else None
    return ReportsSetup(
        path=path,
        settings=settings,
        reports=reports,
        github_api=github_api.rstrip("/"),
        job_pages=public_url if "console" in data else None,
    )


def report_environment(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The report loop's whole environment: gunicorn's, and the variables its GitHub tokens and notification
    secrets are named by (`*_env`)."""
    environ = os.environ if environ is None else environ
    env = receiver_environment(config, environ)
    env.update({name: environ[name] for name in sorted(config.report_env_names) if name in environ})
    return env


def parse_receiver(data: Mapping[str, Any], *, path: Path, environ: Mapping[str, str]) -> ReceiverConfig:
    path = _absolute(path)
    base = path.parent
    only_keys(data, TOP_LEVEL_KEYS, path=path, where=None)
    settings = parse_settings(data.get("deployer", {}), path=path, base=base, environ=environ)
    secret_env_names: set[str] = set()
    apps = {
        name: parse_receiver_app(name, value, path=path, base=base, environ=environ, secret_env_names=secret_env_names)
        for name, value in _apps_table(data, path=path).items()
    }
    fleet_releases = _fleet_releases(data, path=path, base=base, environ=environ, secret_env_names=secret_env_names)
    _check_fleet_apps(tuple(fleet_releases), apps, path=path)
    apps.update(fleet_releases)
    _check_repositories(apps, path=path)
    server = parse_server(
        data.get("server", {}), path=path, base=base, environ=environ, secret_env_names=secret_env_names
    )
    _check_key_apps(server, set(apps), path=path)
    console = _console(data, path=path, base=base, environ=environ, secret_env_names=secret_env_names)
    fleet_apps, fleet_hosts = fleet_names(data["fleet"], path=path) if "fleet" in data else ((), ())
    return ReceiverConfig(
        path=path,
        settings=settings,
        apps=apps,
        server=server,
        secret_env_names=frozenset(secret_env_names),
        console=console,
        fleet_hosts=fleet_hosts,
        fleet_apps=fleet_apps,
        cluster=parse_cluster(data["cluster"], path=path) if "cluster" in data else None,
    )


def _console(
    data: Mapping[str, Any], *, path: Path, base: Path, environ: Mapping[str, str], secret_env_names: set[str]
) -> ConsoleConfig | None:
    """[console], read by the receiver: its session key's variable goes into gunicorn's environment."""
    if "console" not in data:
        return None
    return parse_console(data["console"], path=path, base=base, environ=environ, secret_env_names=secret_env_names)


def receiver_environment(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """gunicorn's whole environment: the locale, PATH, the config's path and the receiver's own *_env secrets.

    Never the worker's registry passwords, asset tokens or anything else the root environment holds.
    """
    environ = os.environ if environ is None else environ
    kept = RECEIVER_PLAIN_ENV | config.receiver_env_names
    env = {name: environ[name] for name in sorted(kept) if name in environ}
    env[CONFIG_ENV] = str(config.path)
    return env


def _fleet_releases(
    data: Mapping[str, Any], *, path: Path, base: Path, environ: Mapping[str, str], secret_env_names: set[str]
) -> dict[str, ReceiverApp]:
    """A controller's receiver knows a fleet app by its release policy alone: its releases queue a rollout."""
    return {
        name: ReceiverApp(
            name=name,
            fleet=True,
            **release_policy(name, entry, path=path, base=base, environ=environ, secret_env_names=secret_env_names),
        )
        for name, entry in release_tables(data, path=path).items()
    }


def _check_key_apps(server: ServerConfig, apps: set[str], *, path: Path) -> None:
    """A key limited to an app that is not configured would be a typo that grants nothing: say so."""
    for key in server.operators.values():
        unknown = sorted(set(key.apps or ()) - apps)
        if unknown:
            raise ConfigError(f"no app is named {unknown[0]!r}", path=path, key=f"server.operators.{key.key_id}.apps")


def _check_fleet_apps(fleet_apps: tuple[str, ...], apps: Mapping[str, Any], *, path: Path) -> None:
    """A fleet app runs on the fleet's hosts, not here: one name must not mean both."""
    both = sorted(set(fleet_apps) & set(apps))
    if both:
        raise ConfigError(
            f"app {both[0]!r} is also configured under [apps]: a controller rolls a fleet app out "
            "to its hosts and runs no copy of its own",
            path=path,
            key="fleet.apps",
        )


def _apps_table(data: Mapping[str, Any], *, path: Path) -> dict[str, Any]:
    apps_data = data.get("apps", {})
    if "fleet" in data and apps_data == {}:
        return {}  # a controller only: its apps run on the fleet's hosts
    if not isinstance(apps_data, dict) or not apps_data:
        raise ConfigError("at least one app must be configured under [apps.NAME]", path=path, key="apps")
    return apps_data


# --- checks across tables ------------------------------------------------------------------------


def _check_ipv6(settings: Settings, cluster: Any, *, path: Path) -> None:
    """What a dual-stack host cannot do yet is refused here, with the reason, rather than half done."""
    if cluster is not None and cluster.address6 is not None and not settings.ipv6:
        raise ConfigError(
            "needs [deployer] ipv6 = true: the apps' IPv6 rules serve what the shared IPv6 address takes in",
            path=path,
            key="cluster.address6",
        )
    if not settings.ipv6:
        return
    if cluster is not None and cluster.address6 is None:
        raise ConfigError(
            "needs [cluster] address6 and subnet6 on a cluster host, and an address6 for each of [[cluster.hosts]]: "
            "IPv6 clients are served on a shared IPv6 address of their own (docs/ipv6.md#the-cluster)",
            path=path,
            key="deployer.ipv6",
        )


def _check_port_conflicts(apps: Mapping[str, AppConfig], *, path: Path, maintenance_port: int | None = None) -> None:
    """A host port belongs to one role of one app: two owners would steal each other's traffic."""
    owners: dict[tuple[int, str], str] = {}
    for app in apps.values():
        for port in app.ports:
            for role in ("external",) if app.host_bound else ("external", "blue", "green"):
                key = (getattr(port, role), port.protocol)
                if key in owners:
                    raise ConfigError(
                        f"host port {key[0]}/{key[1]} is already used as {owners[key]}",
                        path=path,
                        app=app.name,
                        key="ports",
                    )
                owners[key] = f"the {role} port of app {app.name!r}"
    for app in apps.values():
        if app.status_port is not None:
            if (app.status_port, "tcp") in owners:
                raise ConfigError(
                    f"host port {app.status_port}/tcp is already used as {owners[(app.status_port, 'tcp')]}",
                    path=path,
                    app=app.name,
                    key="status_port",
                )
            owners[(app.status_port, "tcp")] = f"the status port of app {app.name!r}"
    if maintenance_port is not None and (maintenance_port, "tcp") in owners:
        raise ConfigError(
            f"port {maintenance_port}/tcp is already used as {owners[(maintenance_port, 'tcp')]}",
            path=path,
            key="deployer.maintenance_port",
        )


def _check_repositories(apps: Mapping[str, AppConfig], *, path: Path) -> None:
    seen: dict[str, str] = {}
    for app in apps.values():
        if app.repository:
            key = app.repository.lower()
            if key in seen:
                raise ConfigError(
                    f"repository {app.repository} already triggers app {seen[key]!r}",
                    path=path,
                    app=app.name,
                    key="repository",
                )
            seen[key] = app.name
