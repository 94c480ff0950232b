"""Configs for tests: one app's TOML table, and a whole config parsed with its state folder under tmp_path."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deployer import config as config_module
from deployer.config import AppConfig, Config, HealthCheck, PortMapping

# Two apps served on the shared address (tcp 80 and 443, udp 53): the cluster rules' tests render their ports.
CLUSTER_APPS: dict[str, Any] = {
    "web": {
        "image": "r.example/web",
        "cluster": True,
        "ports": [
            {"external": 80, "container": 8080, "blue": 8001, "green": 8002},
            {"external": 53, "container": 5353, "protocol": "udp", "blue": 8001, "green": 8002},
        ],
    },
    "api": {
        "image": "r.example/api",
        "cluster": True,
        "ports": [{"external": 443, "container": 8443, "blue": 9001, "green": 9002}],
    },
}


def toml_value(value: Any) -> str:
    """A TOML value: strings quoted (JSON's escapes are TOML's), booleans lowercase, tables inline."""
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)


def app_toml(
    name: str,
    external: int | None = None,
    *,
    blue: int | None = None,
    green: int | None = None,
    container: int = 80,
    protocol: str | None = None,
    ports: Sequence[tuple[str, int, int, int, int]] = (),
    image: str | None = None,
    health: Mapping[str, Any] | None = None,
    extra: str = "",
    **keys: Any,
) -> str:
    """One app `name`: its image (registry.example:5000/<name> unless named), its own `keys` (drain_seconds, env,
    bind ...), `extra` TOML lines, its ports, then its [health] table. The port `external` goes to `container`, with
    blue and green on the next two ports unless named; `ports` adds (protocol, external, container, blue, green)."""
    lines = [f"[apps.{name}]", f"image = {toml_value(image or f'registry.example:5000/{name}')}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    lines += [extra.rstrip("\n")] if extra else []
    table = [] if external is None else [(protocol, external, container, blue or external + 1, green or external + 2)]
    for kind, outside, inside, blue_port, green_port in [*table, *ports]:
        lines += [f"[[apps.{name}.ports]]", f"external = {outside}", f"container = {inside}"]
        lines += [f"protocol = {toml_value(kind)}"] if kind else []
        lines += [f"blue = {blue_port}", f"green = {green_port}"]
    if health:
        lines += [f"[apps.{name}.health]", *(f"{key} = {toml_value(value)}" for key, value in health.items())]
    return "\n".join(lines) + "\n"


ASSET_SITE = app_toml("site", 9000, extra='repository = "acme/site"\n[apps.site.asset]\nname = "image.tar"\n')


def host_bound_app(name: str, *ports: int) -> AppConfig:
    """A host-bound app (a server on the host itself, not a container) on these tcp ports, as its config makes it."""
    return AppConfig(
        name=name,
        image="",
        ports=tuple(PortMapping(port, port, "tcp", 0, 0) for port in ports),
        health=HealthCheck(type="tcp", port=ports[0]),
        host_bound=True,
    )


def config_text(tmp_path: Path, *apps: str, server: str = "", tables: str = "") -> str:
    """A whole config: [deployer] with its state folder under tmp_path, [server] with the `server` lines (its own
    sub-tables too), other `tables`, then the apps."""
    return f'[deployer]\nstate_dir = "{tmp_path / "state"}"\n[server]\n{server}\n{tables}\n' + "".join(apps)


def make_config(
    tmp_path: Path,
    *apps: str,
    server: str = "",
    tables: str = "",
    environ: Mapping[str, str] | None = None,
    parse: Callable[..., Any] = config_module.parse,
) -> Config:
    """`config_text` parsed as tmp_path/deployer.toml (`parse_receiver` parses the receiver's part only)."""
    text = config_text(tmp_path, *apps, server=server, tables=tables)
    return parse(tomllib.loads(text), path=tmp_path / "deployer.toml", environ=dict(environ or {}))


def cluster_config(path: Path, cluster: Mapping[str, Any], *, state_dir: Path | None = None) -> Config:
    """A config of one clustered app, web (80 to 8080), with the [cluster] table `cluster` (under 198.18.10.0/24)."""
    web = {
        "image": "r.example/web",
        "cluster": True,
        "ports": [{"external": 80, "container": 8080, "blue": 8001, "green": 8002}],
    }
    data: dict[str, Any] = {
        "apps": {"web": web},
        "cluster": {"address": "198.18.10.100", "subnet": "198.18.10.0/24", **cluster},
    }
    if state_dir is not None:
        data["deployer"] = {"state_dir": str(state_dir)}
    return config_module.parse(data, path=path, environ={})


# The app of the forwarding tests: two TCP ports and a UDP one on the first's number.
FORWARDED_DEMO = config_module.parse(
    {
        "apps": {
            "demo": {
                "image": "registry.example:5000/demo",
                "ports": [
                    {"external": 1000, "container": 8080, "blue": 1001, "green": 1002},
                    {"external": 1000, "container": 9090, "protocol": "udp", "blue": 1001, "green": 1002},
                    {"external": 1443, "container": 8443, "blue": 1444, "green": 1445},
                ],
            }
        }
    },
    path=Path("/etc/deployer/deployer.toml"),
    environ={},
)
