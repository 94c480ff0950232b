"""Build the real engine from a config: the one place that picks the concrete adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from deployer.adapters.api_client import SignedClient
from deployer.adapters.deadlines import Deadlines
from deployer.adapters.docker_host import DockerHost
from deployer.adapters.github import GitHubHttp
from deployer.adapters.image_archive import PreloadedImage, load_image
from deployer.adapters.keepalived import Keepalived
from deployer.adapters.iptables import Netfilter
from deployer.adapters.nftables import Nftables
from deployer.adapters.probes import Probes, check_registry
from deployer.adapters.processes import die_with_parent, run_hook, start_job
from deployer.adapters.processes import spawn as spawn_process
from deployer.adapters.routing import Routing
from deployer.adapters.shared_address import SharedAddress
from deployer.audit import build_journal
from deployer.config import Config
from deployer.host.netfilter.backend import NetfilterBackend
from deployer.host.cluster import ClusterAgent, ClusterControl, ClusterPaths
from deployer.host.engine import DockerPort, Engine
from deployer.host.netfilter.nftables import NftablesBackend
from deployer.journal import Journal
from deployer.plan import app_chain, nft


def build_engine(config: Config, journal: Journal | None = None, *, preloaded: str | None = None,
                 docker: DockerPort | None = None, netfilter: NetfilterBackend | None = None) -> Engine:
    """The engine with the real adapters.

    `preloaded`: an image reference already on the host (from a release asset), deployed without a pull;
    `docker` and `netfilter` replace two of the adapters (a benchmark's wrappers).
    """
    docker = docker or DockerHost(config.settings.docker_host)
    chosen, other = build_netfilter(config)
    return Engine(
        config,
        PreloadedImage(docker, preloaded) if preloaded is not None else docker,
        netfilter or chosen,
        retired_netfilter=None if netfilter is not None else other,  # a supplied adapter comes without a pair
        routing=Routing(),
        prober=Probes(),
        run_hook=run_hook,
        journal=journal or build_journal(config),
    )


def build_netfilter(config: Config) -> tuple[NetfilterBackend, NetfilterBackend]:
    """The backend `[deployer] backend` names, and the other one, whose rules reconcile removes after a switch."""
    iptables = Netfilter(wait_seconds=config.settings.iptables_wait)
    ports = {app.name: app_chain.ports(app) for app in config.apps.values()}
    nftables = NftablesBackend(Nftables(), iptables, table=nft.table_name(config.settings.chain_prefix),
                               prefix=config.settings.chain_prefix, reader=Nftables(handles=True),
                               generation=Path(config.settings.state_dir) / "locks" / "nftables.generation",
                               ports=lambda app: ports.get(app, ()))
    return (nftables, iptables) if config.settings.backend == "nftables" else (iptables, nftables)


# --- what the deploy worker acts with besides the engine ----------------------------------------


def build_host_probes(config: Config) -> tuple[Callable[[], object], Callable[[], object]]:
    """The worker's health probes: Docker answers, and the nat table can be read."""
    return (lambda: DockerHost(config.settings.docker_host, timeout=5).ping(),
            lambda: Netfilter(wait_seconds=config.settings.iptables_wait).save_nat())


def build_registry_check(config: Config) -> Callable[[], str] | None:
    """Whether every registry an app pulls from answers: "ok" or the reasons; None when no app names one."""
    registries = sorted({app.registry for app in config.apps.values() if app.registry})
    if not registries:
        return None

    def check() -> str:
        problems = [problem for problem in map(check_registry, registries) if problem]
        return "; ".join(problems)[:300] if problems else "ok"
    return check


def build_image_loader(config: Config) -> Callable[[Path, str, str], str]:
    """Loads a `docker save` archive and tags its image `image:tag`; returns that reference."""
    return lambda path, image, tag: load_image(DockerHost(config.settings.docker_host), path, image, tag)


def build_asset_http() -> GitHubHttp:
    return GitHubHttp()


# --- the cluster agent and its commands ------------------------------------------------------------


def build_cluster_agent(config: Config, journal: Journal | None = None) -> ClusterAgent:
    return ClusterAgent(config, Netfilter(wait_seconds=config.settings.iptables_wait),
                        Keepalived(ClusterPaths.under(config.settings.state_dir).folder), SharedAddress(),
                        journal=journal or build_journal(config), prober=Probes())


def build_cluster_control(config: Config) -> ClusterControl:
    return ClusterControl(config, Netfilter(wait_seconds=config.settings.iptables_wait), build_journal(config))


__all__ = ["Deadlines", "SignedClient", "build_asset_http", "build_cluster_agent", "build_cluster_control",
           "build_engine", "build_host_probes", "build_image_loader", "build_journal", "build_netfilter",
           "die_with_parent", "spawn_process", "start_job"]
