"""Build the real engine from a config: the one place that picks the concrete adapters."""

from __future__ import annotations

from deployer.adapters.docker_host import DockerHost
from deployer.adapters.netfilter import Netfilter
from deployer.adapters.probes import Probes
from deployer.adapters.processes import run_hook
from deployer.adapters.routing import Routing
from deployer.audit import build_journal
from deployer.config import Config
from deployer.host.chains import NetfilterBackend
from deployer.host.engine import DockerPort, Engine
from deployer.journal import Journal


def build_engine(config: Config, journal: Journal | None = None, *, docker: DockerPort | None = None,
                 netfilter: NetfilterBackend | None = None) -> Engine:
    """The engine with the real adapters; `docker` and `netfilter` replace two of them (a benchmark's wrappers)."""
    return Engine(
        config,
        docker or DockerHost(config.settings.docker_host),
        netfilter or Netfilter(wait_seconds=config.settings.iptables_wait),
        routing=Routing(),
        prober=Probes(),
        run_hook=run_hook,
        journal=journal or build_journal(config),
    )


__all__ = ["build_engine", "build_journal"]
