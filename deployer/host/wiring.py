"""Build the real engine from a config: the one place that picks the concrete adapters."""

from __future__ import annotations

from deployer.adapters.docker_host import DockerHost
from deployer.adapters.keepalived import Keepalived
from deployer.adapters.netfilter import Netfilter
from deployer.adapters.shared_address import SharedAddress
from deployer.audit import build_journal
from deployer.config import Config
from deployer.host.cluster import ClusterAgent, ClusterControl, ClusterPaths
from deployer.host.engine import Engine
from deployer.journal import Journal


def build_engine(config: Config, journal: Journal | None = None) -> Engine:
    return Engine(
        config,
        DockerHost(config.settings.docker_host),
        Netfilter(wait_seconds=config.settings.iptables_wait),
        journal=journal or build_journal(config),
    )


def build_cluster_agent(config: Config, journal: Journal | None = None) -> ClusterAgent:
    return ClusterAgent(config, Netfilter(wait_seconds=config.settings.iptables_wait),
                        Keepalived(ClusterPaths.under(config.settings.state_dir).folder), SharedAddress(),
                        journal=journal or build_journal(config))


def build_cluster_control(config: Config) -> ClusterControl:
    return ClusterControl(config, Netfilter(wait_seconds=config.settings.iptables_wait), build_journal(config))


__all__ = ["build_cluster_agent", "build_cluster_control", "build_engine", "build_journal"]
