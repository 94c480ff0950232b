"""An app's table under [apps.NAME]: image, ports, health, release policy, hooks, asset, watchdog, canary ...

Two readings of it: `parse_app` for the worker (everything), `parse_receiver_app` for the receiver, which
reads the release policy and what the maintenance page needs, never an asset token or an env file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.env_files import app_env
from deployer.config.fields import (
    APP_NAME_RE,
    ASSET_NAME_RE,
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
    HealthCheck,
    PortMapping,
    ReceiverApp,
    WatchdogConfig,
)
from deployer.config.secrets import read_secret
from deployer.errors import ConfigError

MAX_PAGE_BYTES = 1024 * 1024
APP_KEYS = {
    "image",
    "ports",
    "health",
    "repository",
    "tag_pattern",
    "prereleases",
    "bind",
    "drain_seconds",
    "stop_timeout",
    "restart",
    "env",
    "env_files",
    "volumes",
    "labels",
    "command",
    "hooks_dir",
    "asset",
    "maintenance_page",
    "status_port",
    "host_bound",
    "watchdog",
    "github_secret",
    "github_secret_file",
    "github_secret_env",
    "github_hook_id",
    "cluster",
    "canary",
    "canary_sticky",
    "canary_bake",
    "image_wait",
    "ipv6",
    # what reports its deploys to GitHub: read by config/reports.py
    "github_environment",
    "environment_url",
    "github_token",
    "github_token_file",
    "github_token_env",
}
HOST_BOUND_APP_KEYS = {"host_bound", "ports", "maintenance_page"}


def _app_data(name: str, data: Any, *, path: Path) -> tuple[dict[str, Any], bool]:
    """The app's table and whether it is host-bound; its keys checked against what that kind takes."""
    if not APP_NAME_RE.fullmatch(name):
        raise ConfigError(
            "app names are 1 to 19 lowercase letters, digits or '-', starting with a letter", path=path, app=name
        )
    data = table(data, path=path, key=None, app=name)
    host_bound = typed(data, "host_bound", bool, False, path=path, key="host_bound", app=name)
    only_keys(data, HOST_BOUND_APP_KEYS if host_bound else APP_KEYS, path=path, where=None, app=name)
    return data, host_bound


def release_policy(
    name: str,
    data: Mapping[str, Any],
    *,
    path: Path,
    base: Path,
    environ: Mapping[str, str],
    secret_env_names: set[str],
) -> dict[str, Any]:
    """The keys the receiver decides by: which repository deploys the app, which tags, and who signs for it."""

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return typed(data, key, kind, default, path=path, key=key, app=name)

    repository = get("repository", str, None)
    if repository is not None:
        matching(
            repository,
            REPOSITORY_RE,
            "must be a GitHub repository as owner/name",
            path=path,
            app=name,
            key="repository",
        )
    tag_pattern = get("tag_pattern", str, None)
    if tag_pattern is not None:
        try:
            re.compile(tag_pattern)
        except re.error as exc:
            raise ConfigError(
                f"not a valid regular expression: {exc}", path=path, app=name, key="tag_pattern"
            ) from None
    github_secret = read_secret(
        data,
        "github_secret",
        path=path,
        base=base,
        environ=environ,
        where=f"apps.{name}",
        secret_env_names=secret_env_names,
        required=False,
    )
    github_hook_id = (
        hook_id(data["github_hook_id"], path=path, key="github_hook_id", app=name) if "github_hook_id" in data else None
    )
    if (github_secret is not None or github_hook_id is not None) and repository is None:
        given = next(k for k in ("github_secret_file", "github_secret_env", "github_hook_id") if k in data)
        raise ConfigError(
            "needs repository: only deliveries from the app's own repository use it", path=path, app=name, key=given
        )
    return {
        "repository": repository,
        "tag_pattern": tag_pattern,
        "prereleases": get("prereleases", bool, False),
        "github_secret": github_secret,
        "github_hook_id": github_hook_id,
    }


def parse_receiver_app(
    name: str, data: Any, *, path: Path, base: Path, environ: Mapping[str, str], secret_env_names: set[str]
) -> ReceiverApp:
    data, host_bound = _app_data(name, data, path=path)
    if host_bound:
        bound = _parse_host_bound_app(name, data, path=path, base=base)
        return ReceiverApp(name=name, host_bound=True, ports=bound.ports, maintenance_page=bound.maintenance_page)
    asset = (
        _parse_asset(
            name,
            data["asset"],
            path=path,
            base=base,
            environ=environ,
            secret_env_names=secret_env_names,
            with_token=False,
        )
        if "asset" in data
        else None
    )
    return ReceiverApp(
        name=name,
        asset=asset,
        ports=_parse_ports(name, data.get("ports"), path=path),
        maintenance_page=_maintenance_page(name, data, path=path, base=base),
        **release_policy(name, data, path=path, base=base, environ=environ, secret_env_names=secret_env_names),
    )


def parse_app(
    name: str,
    data: Any,
    *,
    path: Path,
    base: Path,
    environ: Mapping[str, str],
    secret_env_names: set[str],
    receiver_env_names: set[str],
) -> AppConfig:
    data, host_bound = _app_data(name, data, path=path)
    if host_bound:
        return _parse_host_bound_app(name, data, path=path, base=base)

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return typed(data, key, kind, default, path=path, key=key, app=name)

    image = get("image", str, None)
    if not image:
        raise ConfigError("is required", path=path, app=name, key="image")
    if "@" in image or not IMAGE_RE.fullmatch(image):
        raise ConfigError(
            "must be an image repository without tag or digest, e.g. registry.example:5000/app",
            path=path,
            app=name,
            key="image",
        )
    policy = release_policy(name, data, path=path, base=base, environ=environ, secret_env_names=receiver_env_names)

    bind = get("bind", str, "127.0.0.1")
    try:
        ipaddress.IPv4Address(bind)
    except ValueError:
        raise ConfigError("must be an IPv4 address", path=path, app=name, key="bind") from None

    restart = get("restart", str, "unless-stopped")
    if not RESTART_RE.fullmatch(restart):
        raise ConfigError("must be no, always, unless-stopped or on-failure[:N]", path=path, app=name, key="restart")

    ports = _parse_ports(name, data.get("ports"), path=path)
    env = app_env(name, data, path=path, base=base)
    volumes = get("volumes", list, [])
    for i, volume in enumerate(volumes):
        if not isinstance(volume, str) or not re.fullmatch(r"^[^:]+:/[^:]*(:(ro|rw))?$", volume):
            raise ConfigError("must be 'SOURCE:/container/path[:ro|:rw]'", path=path, app=name, key=f"volumes[{i}]")
    labels = get("labels", dict, {})
    for key, value in labels.items():
        if not isinstance(value, str):
            raise ConfigError("label values must be strings", path=path, app=name, key=f"labels.{key}")
        if key.startswith("deployer."):
            raise ConfigError("labels starting with 'deployer.' are reserved", path=path, app=name, key=f"labels.{key}")
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
        hooks_dir=(
            absolute_path(hooks_dir, base, path=path, key="hooks_dir", app=name) if hooks_dir is not None else None
        ),
        asset=(
            _parse_asset(name, data["asset"], path=path, base=base, environ=environ, secret_env_names=secret_env_names)
            if "asset" in data
            else None
        ),
        maintenance_page=_maintenance_page(name, data, path=path, base=base),
        status_port=(
            port_number(data["status_port"], path=path, key="status_port", app=name) if "status_port" in data else None
        ),
        watchdog=_parse_watchdog(name, data.get("watchdog", {}), path=path),
        cluster=get("cluster", bool, False),
        canary=(
            integer(
                data["canary"],
                minimum=1,
                maximum=99,
                path=path,
                key="canary",
                app=name,
                message="must be the canary's share of new connections, a whole percentage from 1 to 99",
            )
            if "canary" in data
            else None
        ),
        canary_sticky=typed(data, "canary_sticky", bool, False, path=path, key="canary_sticky", app=name),
        canary_bake=(
            duration(data, "canary_bake", 0.0, path=path, key="canary_bake", app=name)
            if "canary_bake" in data
            else None
        ),
        image_wait=(
            duration(data, "image_wait", 0.0, path=path, key="image_wait", app=name, zero=True)
            if "image_wait" in data
            else None
        ),
        ipv6=get("ipv6", bool, True),
        **policy,
    )


def _parse_host_bound_app(name: str, data: Mapping[str, Any], *, path: Path, base: Path) -> AppConfig:
    """An app that listens on the host itself: only its tcp ports and its page; nothing to deploy."""
    ports = []
    for where, entry in _port_tables(name, data.get("ports"), {"external", "protocol"}, path=path):
        if entry.get("protocol", "tcp") != "tcp":
            raise ConfigError(
                "must be 'tcp': a host-bound app's ports get the maintenance page, which is HTTP",
                path=path,
                app=name,
                key=f"{where}.protocol",
            )
        external = port_number(entry.get("external"), path=path, key=f"{where}.external", app=name)
        ports.append(PortMapping(external=external, container=external, protocol="tcp", blue=0, green=0))
    if len({p.external for p in ports}) != len(ports):
        raise ConfigError("a port is listed twice", path=path, app=name, key="ports")
    return AppConfig(
        name=name,
        image="",
        ports=tuple(ports),
        health=HealthCheck(type="tcp", port=ports[0].external),
        host_bound=True,
        maintenance_page=_maintenance_page(name, data, path=path, base=base),
    )


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
        raise ConfigError(
            "is larger than 1 MiB; a maintenance page should load fast", path=path, app=app, key="maintenance_page"
        )
    return page


def _parse_watchdog(app: str, data: Any, *, path: Path) -> WatchdogConfig:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, app=app, key="watchdog")
    only_keys(data, {"enabled", "interval", "failures", "recoveries"}, path=path, where="watchdog", app=app)
    counts = {
        name: integer(
            data.get(name, getattr(WatchdogConfig, name)), minimum=1, path=path, app=app, key=f"watchdog.{name}"
        )
        for name in ("failures", "recoveries")
    }
    return WatchdogConfig(
        enabled=typed(data, "enabled", bool, True, path=path, key="watchdog.enabled", app=app),
        interval=duration(data, "interval", WatchdogConfig.interval, path=path, key="watchdog.interval", app=app),
        **counts,
    )


def _parse_asset(
    app: str,
    data: Any,
    *,
    path: Path,
    base: Path,
    environ: Mapping[str, str],
    secret_env_names: set[str],
    with_token: bool = True,
) -> AssetConfig:
    """`with_token=False` (the receiver): the asset's name is checked, its token is not read."""
    where = f"apps.{app}.asset"
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, app=app, key="asset")
    only_keys(data, {"name", "token", "token_file", "token_env", "max_bytes"}, path=path, where="asset", app=app)
    name = typed(data, "name", str, None, path=path, key="asset.name", app=app)
    if not name or not ASSET_NAME_RE.fullmatch(name):
        raise ConfigError(
            "must be the file name of a release asset, e.g. image.tar", path=path, app=app, key="asset.name"
        )
    max_bytes = integer(
        data.get("max_bytes", AssetConfig.max_bytes),
        minimum=1,
        path=path,
        app=app,
        key="asset.max_bytes",
        message="must be a whole number of bytes, at least 1",
    )
    token = (
        read_secret(
            data,
            "token",
            path=path,
            base=base,
            environ=environ,
            where=where,
            secret_env_names=secret_env_names,
            required=False,
        )
        if with_token
        else None
    )
    return AssetConfig(name=name, token=token, max_bytes=max_bytes)


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
        values = {
            key: port_number(entry.get(key), path=path, key=f"{where}.{key}", app=app)
            for key in ("external", "container", "blue", "green")
        }
        protocol = entry.get("protocol", "tcp")
        if protocol not in PROTOCOLS:
            raise ConfigError("must be 'tcp' or 'udp'", path=path, app=app, key=f"{where}.protocol")
        host_ports = [values["external"], values["blue"], values["green"]]
        if len(set(host_ports)) != 3:
            raise ConfigError(
                "external, blue and green must be three different host ports", path=path, app=app, key=where
            )
        ports.append(PortMapping(protocol=protocol, **values))
    seen: set[tuple[int, str]] = set()
    for port in ports:
        if (port.container, port.protocol) in seen:
            raise ConfigError(
                f"container port {port.container}/{port.protocol} is listed twice", path=path, app=app, key="ports"
            )
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
        raise ConfigError(
            "a health check needs a tcp port in [[apps.NAME.ports]]", path=path, app=app, key="health.port"
        )
    port = data.get("port", tcp_ports[0])
    if port not in tcp_ports:
        raise ConfigError(
            f"must be one of the app's tcp container ports {tcp_ports}", path=path, app=app, key="health.port"
        )
    check_path = data.get("path", "/")
    if not isinstance(check_path, str) or not check_path.startswith("/") or any(c in check_path for c in " \r\n"):
        raise ConfigError("must be an absolute URL path", path=path, app=app, key="health.path")
    expect = integer(
        data.get("expect_status", 200),
        minimum=100,
        maximum=599,
        path=path,
        app=app,
        key="health.expect_status",
        message="must be an HTTP status code",
    )
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
        raise ConfigError(
            "is shorter than interval x (successes - 1): the gate could never pass",
            path=path,
            app=app,
            key="health.deadline",
        )
    return health
