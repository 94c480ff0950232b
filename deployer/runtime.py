"""Build the real engine from a config: the one place that picks the concrete adapters."""

from __future__ import annotations

from deployer.adapters.docker_host import DockerHost
from deployer.adapters.netfilter import Netfilter
from deployer.audit import AuditSink
from deployer.config import Config
from deployer.engine import Engine
from deployer.journal import Journal, Sink, log_sink


def build_journal(config: Config, extra_sinks: list[Sink] | None = None) -> Journal:
    audit = AuditSink.for_state_dir(config.settings.state_dir)
    return Journal([log_sink, audit, *(extra_sinks or [])], secrets=config.secrets())


def build_engine(config: Config, journal: Journal | None = None) -> Engine:
    return Engine(
        config,
        DockerHost(config.settings.docker_host),
        Netfilter(wait_seconds=config.settings.iptables_wait),
        journal=journal or build_journal(config),
    )
