"""Build the real engine from a config: the one place that picks the concrete adapters."""

from __future__ import annotations

from deployer.adapters.api_client import SignedClient
from deployer.adapters.deadlines import Deadlines
from deployer.adapters.docker_host import DockerHost
from deployer.adapters.netfilter import Netfilter
from deployer.adapters.processes import spawn as spawn_process
from deployer.audit import build_journal
from deployer.config import Config
from deployer.host.engine import Engine
from deployer.journal import Journal


def build_engine(config: Config, journal: Journal | None = None) -> Engine:
    return Engine(
        config,
        DockerHost(config.settings.docker_host),
        Netfilter(wait_seconds=config.settings.iptables_wait),
        journal=journal or build_journal(config),
    )


__all__ = ["build_engine", "build_journal", "spawn_process", "Deadlines", "SignedClient"]
