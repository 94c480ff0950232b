"""Render what the Docker SDK is asked to do for one instance. Pure: no docker import here.

The instance publishes each container port on its set's host port (bound to `bind`, loopback by
default): that is where health checks and operators reach an instance directly, and publishing
is what makes Docker's own FORWARD rules accept the DNATed traffic to the container.
Clients never go through that published port: the DNAT rules send them to the container's
address on the deployer's network, so no docker-proxy is in the data path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deployer.config import AppConfig, Settings

LABEL_OWNER = "deployer.owner"
LABEL_APP = "deployer.app"
LABEL_SET = "deployer.set"
LABEL_TAG = "deployer.tag"
LABEL_DIGEST = "deployer.digest"
LABEL_IMAGE = "deployer.image"


@dataclass(frozen=True)
class Release:
    """What to run: the tag, and the image reference the pull resolved to."""

    tag: str
    image: str  # repository, e.g. 127.0.0.1:5000/demo
    digest: str | None = None  # sha256:... of the manifest, when the registry gave one

    @property
    def reference(self) -> str:
        return f"{self.image}:{self.tag}"

    @property
    def pinned_reference(self) -> str:
        """The exact content by digest: what a rollback runs even if the tag moved since."""
        return f"{self.image}@{self.digest}" if self.digest else self.reference


@dataclass(frozen=True)
class ContainerInfo:
    """What the daemon says of one container: the facts the engine decides on."""

    id: str
    name: str
    status: str  # created, running, restarting, exited, dead ...
    exit_code: int | None
    restart_count: int
    labels: Mapping[str, str] = field(default_factory=dict)
    addresses: Mapping[str, str] = field(default_factory=dict)  # network name -> IPv4 address
    addresses6: Mapping[str, str] = field(default_factory=dict)  # network name -> IPv6 address, on a dual-stack one

    def address(self, network: str) -> str | None:
        return self.addresses.get(network) or None

    def address6(self, network: str) -> str | None:
        return self.addresses6.get(network) or None


def owner(settings: Settings) -> str:
    return settings.chain_prefix.lower()


def container_name(settings: Settings, app: str, port_set: str) -> str:
    return f"{owner(settings)}-{app}-{port_set}"


def selector(settings: Settings, app: str | None = None) -> dict[str, list[str]]:
    """Docker list filters that find this deployer's containers (of one app)."""
    labels = [f"{LABEL_OWNER}={owner(settings)}"]
    if app is not None:
        labels.append(f"{LABEL_APP}={app}")
    return {"label": labels}


def run_arguments(settings: Settings, app: AppConfig, port_set: str, release: Release) -> dict[str, Any]:
    """Keyword arguments for `client.containers.run(image, **kwargs)`."""
    labels: dict[str, str] = dict(app.labels)
    labels.update(
        {
            LABEL_OWNER: owner(settings),
            LABEL_APP: app.name,
            LABEL_SET: port_set,
            LABEL_TAG: release.tag,
            LABEL_DIGEST: release.digest or "",
            LABEL_IMAGE: release.image,
        }
    )
    arguments: dict[str, Any] = {
        "name": container_name(settings, app.name, port_set),
        "detach": True,
        "labels": labels,
        "environment": dict(app.env),
        "ports": {f"{p.container}/{p.protocol}": (app.bind, p.set_port(port_set)) for p in app.ports},
        "network": settings.network,
        "restart_policy": restart_policy(app.restart),
    }
    if app.volumes:
        arguments["volumes"] = list(app.volumes)
    if app.command is not None:
        arguments["command"] = list(app.command)
    return arguments


def restart_policy(restart: str) -> dict[str, Any]:
    name, _, retries = restart.partition(":")
    policy: dict[str, Any] = {"Name": name}
    if name == "on-failure" and retries:
        policy["MaximumRetryCount"] = int(retries)
    return policy


def other_set(port_set: str | None) -> str:
    """The idle set: the one that is not active (blue when nothing is)."""
    return "green" if port_set == "blue" else "blue"
