"""The [deployer] table: where the state and hooks live, the chains' prefix, the network, the backend, IPv6."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.fields import BRIDGE_RE, CHAIN_PREFIX_RE, absolute_path, duration, only_keys, port_number, typed
from deployer.config.model import Settings
from deployer.errors import ConfigError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# A production host's layout: the config and its secrets in /etc/deployer, the state here (the shipped units write
# only under it). A config that keeps its state beside itself says so: state_dir = "state".
DEFAULT_STATE_DIR = "/var/lib/deployer/state"
BACKENDS = ("iptables", "nftables")


def default_ipv6_subnet(network: str) -> str:
    """A /64 of the deployer's unique local /48 (fd6e:3b1d:5e2a::/48), picked by the network's name: two
    deployer networks on one Docker daemon (two configs, say) get two subnets, which Docker requires."""
    picked = int.from_bytes(hashlib.sha256(network.encode()).digest()[:2], "big")
    return f"fd6e:3b1d:5e2a:{picked:x}::/64"


def parse_settings(data: Any, *, path: Path, base: Path, environ: Mapping[str, str]) -> Settings:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, key="deployer")
    allowed = {
        "state_dir",
        "hooks_dir",
        "hook_timeout",
        "lock_wait",
        "host_lock_wait",
        "chain_prefix",
        "network",
        "bridge",
        "docker_host",
        "iptables_wait",
        "maintenance_port",
        "backend",
        "image_wait",
        "ipv6",
        "ipv6_subnet",
        "ipv6_forwarding",
    }
    only_keys(data, allowed, path=path, where="deployer")
    key = lambda k: f"deployer.{k}"  # noqa: E731
    prefix = typed(data, "chain_prefix", str, "DEPLOYER", path=path, key=key("chain_prefix"))
    if not CHAIN_PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            "must be 1 to 8 uppercase letters or digits, starting with a letter", path=path, key=key("chain_prefix")
        )
    if prefix in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD") or prefix.startswith("DOCKER"):
        raise ConfigError(
            "must not name a built-in chain or Docker's chains: the deployer owns every chain it names",
            path=path,
            key=key("chain_prefix"),
        )
    bridge = typed(data, "bridge", str, "deployer0", path=path, key=key("bridge"))
    if not BRIDGE_RE.fullmatch(bridge):
        raise ConfigError("must be a Linux interface name of at most 15 characters", path=path, key=key("bridge"))
    network = typed(data, "network", str, "deployer", path=path, key=key("network"))
    if not re.fullmatch(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", network):
        raise ConfigError("must be a Docker network name", path=path, key=key("network"))
    backend = typed(data, "backend", str, "iptables", path=path, key=key("backend"))
    if backend not in BACKENDS:
        raise ConfigError(f'must be "iptables" or "nftables", not {backend!r}', path=path, key=key("backend"))
    ipv6_subnet = typed(data, "ipv6_subnet", str, default_ipv6_subnet(network), path=path, key=key("ipv6_subnet"))
    try:
        subnet = ipaddress.IPv6Network(ipv6_subnet)
    except ValueError:
        raise ConfigError(
            "must be an IPv6 network with its prefix length, e.g. fd6e:3b1d:5e2a::/64",
            path=path,
            key=key("ipv6_subnet"),
        ) from None
    if not 48 <= subnet.prefixlen <= 64 or not (subnet.is_private or subnet.is_global) or subnet.is_link_local:
        raise ConfigError(
            "must be a unique local or global network of /48 to /64 (Docker gives each instance one address of it)",
            path=path,
            key=key("ipv6_subnet"),
        )
    ipv6_forwarding = typed(data, "ipv6_forwarding", str, "fix", path=path, key=key("ipv6_forwarding"))
    if ipv6_forwarding not in ("fix", "check"):
        raise ConfigError(f'must be "fix" or "check", not {ipv6_forwarding!r}', path=path, key=key("ipv6_forwarding"))
    return Settings(
        state_dir=absolute_path(data.get("state_dir", DEFAULT_STATE_DIR), base, path=path, key=key("state_dir")),
        hooks_dir=absolute_path(data.get("hooks_dir", "hooks"), base, path=path, key=key("hooks_dir")),
        hook_timeout=duration(data, "hook_timeout", 60.0, path=path, key=key("hook_timeout")),
        lock_wait=duration(data, "lock_wait", 0.0, path=path, key=key("lock_wait"), zero=True),
        host_lock_wait=duration(data, "host_lock_wait", 30.0, path=path, key=key("host_lock_wait")),
        image_wait=duration(data, "image_wait", Settings.image_wait, path=path, key=key("image_wait"), zero=True),
        chain_prefix=prefix,
        network=network,
        bridge=bridge,
        docker_host=(
            typed(data, "docker_host", str, None, path=path, key=key("docker_host"))
            or environ.get("DOCKER_HOST")
            or DEFAULT_DOCKER_HOST
        ),
        iptables_wait=int(duration(data, "iptables_wait", 10, path=path, key=key("iptables_wait"))),
        maintenance_port=port_number(
            data.get("maintenance_port", Settings.maintenance_port), path=path, key=key("maintenance_port")
        ),
        backend=backend,
        ipv6=typed(data, "ipv6", bool, True, path=path, key=key("ipv6")),
        ipv6_explicit="ipv6" in data,
        ipv6_subnet=subnet.compressed,
        ipv6_forwarding=ipv6_forwarding,
    )
