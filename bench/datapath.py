"""Part 1: the same backend container and the same wrk load through each path, in interleaved rounds.

The backend is deployed by the real engine, with its set ports published on all addresses so
Docker's own published port can be measured too. From the host, 127.0.0.1 on a published port
goes through docker-proxy; from the outside namespace Docker answers a published port with its
own DNAT rule instead (docker-proxy is only in the loopback path), and the report says so.

After the unpinned rounds, pinned rounds of a few paths (plan.PINNED_PATHS) run on the same container with wrk
on one core and the container and the proxies on another: on a 2-core machine the unpinned figures swing with
where the scheduler puts wrk, and the pinned ones say what the path costs when it does not.

Then the nftables backend, and a canary of the next tag takes 50% of new connections (a statistic match in front of the DNAT rule, see
plan/canary.py), and more rounds measure that split path against direct, in the same run: its ratios stand beside
the plain DNAT path's.

A dual-stack run (`plan.ipv6`, every full run) deploys the backend with `[deployer] ipv6 = true` for the whole part,
and its rounds measure IPv6 paths beside the IPv4 ones: direct6 (the instance's IPv6 address), dnat6 (the external
port on a host IPv6 address, the namespace veth's host end: OUTPUT from the host, PREROUTING from outside) and, on
the nftables backend, dnat6-nft. Their ratios are to direct6. The IPv4 rules are the same with IPv6 on (the IPv6
ones are in the ip6 tables, which IPv4 packets never cross), so the IPv4 figures stay comparable with earlier runs.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from bench import analysis
from bench.drivers import EngineDriver, scratch_path
from bench.lab import IMAGE, Lab, say
from bench.loadgen import WrkOutputError, parse_wrk, wrk_argv
from bench.plan import (
    CLIENTS,
    IPTABLES_PATHS,
    NFT_PATHS,
    SPLIT_PATHS,
    Pinning,
    Plan,
    app_toml,
    host_and_port,
    pinning_for,
    round_order,
)
from bench.proxies import haproxy_argv, haproxy_config, nginx_argv, nginx_config
from deployer.errors import DeployerError
from deployer.host.engine import CanaryStart

APP = "datapath"
NOTES = {
    "docker": {"host": "127.0.0.1 -> docker-proxy (userland)", "outside": "Docker's own DNAT rule (no docker-proxy)"},
    "dnat": {
        "host": "127.0.0.1 -> DNAT in OUTPUT, then the deployer's loopback MASQUERADE",
        "outside": "DNAT in PREROUTING",
    },
    "dnat-addr": {"host": "the namespace veth's host address -> DNAT in OUTPUT, no masquerade"},
    "nft": {
        "host": "127.0.0.1 -> the nftables table's DNAT in output, then its loopback masquerade",
        "outside": "the nftables table's DNAT in prerouting",
    },
    "nft-addr": {"host": "the namespace veth's host address -> the nftables table's DNAT in output"},
    "split": {
        "host": "127.0.0.1 -> the canary's statistic match, then DNAT to one of two instances",
        "outside": "the canary's statistic match in PREROUTING, then DNAT",
    },
    "direct6": {"host": "the instance's IPv6 address", "outside": "the instance's IPv6 address, forwarded"},
    "dnat6": {
        "host": "the namespace veth's host IPv6 address -> ip6tables DNAT in OUTPUT (IPv6 has no loopback path)",
        "outside": "ip6tables DNAT in PREROUTING",
    },
    "dnat6-nft": {
        "host": "the namespace veth's host IPv6 address -> the table ip6's DNAT in output",
        "outside": "the table ip6's DNAT in prerouting",
    },
}


def run_datapath(lab: Lab, plan: Plan, outside: Any, tags: list[str]) -> dict[str, Any]:
    assert lab.ports is not None
    ports = lab.ports.datapath
    app_text = app_toml(APP, IMAGE, ports, bind="0.0.0.0", drain_seconds=0.5)
    driver = EngineDriver(lab, APP, app_text, ipv6=plan.ipv6)
    workdir = scratch_path(lab, APP)
    proxies = []
    try:
        driver.deploy(tags[0])
        (container,) = lab.docker.containers({"label": [f"deployer.owner={lab.names.owner}", f"deployer.app={APP}"]})
        backend = (container.address(lab.names.network) or "", 8080)
        set_port = ports.tcp_blue if container.labels.get("deployer.set") == "blue" else ports.tcp_green
        listen = [("127.0.0.1", lab.ports.haproxy), (outside.host_ip, lab.ports.haproxy)]
        (workdir / "haproxy.cfg").write_text(haproxy_config(listen, backend))
        listen = [("127.0.0.1", lab.ports.nginx), (outside.host_ip, lab.ports.nginx)]
        (workdir / "nginx.conf").write_text(nginx_config(listen, backend, workdir))
        proxies.append(lab.popen(haproxy_argv(workdir / "haproxy.cfg")))
        proxies.append(lab.popen(nginx_argv(workdir / "nginx.conf", workdir)))

        targets: dict[str, dict[str, str]] = {}
        for client, host in (("host", "127.0.0.1"), ("outside", outside.host_ip)):
            targets[client] = {
                "direct": f"{backend[0]}:{backend[1]}",
                "dnat": f"{host}:{ports.tcp}",
                "haproxy": f"{host}:{lab.ports.haproxy}",
                "nginx": f"{host}:{lab.ports.nginx}",
                "docker": f"{host}:{set_port}",
            }
        # The host end of the namespace's veth is a local address of the host: DNAT without the
        # masquerade that a 127.0.0.1 client needs, to tell the two costs apart.
        targets["host"]["dnat-addr"] = f"{outside.host_ip}:{ports.tcp}"
        backend6 = None
        if plan.ipv6:
            backend6 = container.address6(lab.names.network)
            if not backend6:
                raise RuntimeError(f"the {APP} instance has no IPv6 address on {lab.names.network}")
            for client in CLIENTS:
                targets[client]["direct6"] = f"[{backend6}]:8080"
                targets[client]["dnat6"] = f"[{outside.host_ip6}]:{ports.tcp}"
        for path in ("haproxy", "nginx", "docker", "dnat", *(("direct6", "dnat6") if plan.ipv6 else ())):
            _wait_answers(targets["host"][path])

        def measure(client: str, path: str, seconds: float, pin: Pinning | None = None) -> dict[str, Any]:
            argv = wrk_argv(
                f"http://{targets[client][path]}/",
                threads=plan.wrk_threads,
                connections=plan.wrk_connections,
                seconds=seconds,
            )
            argv = pin.wrap(argv) if pin else argv
            result = lab.run(argv, inside=outside if client == "outside" else None, timeout=seconds + 30, check=False)
            try:
                return parse_wrk(result.stdout).as_dict()
            except WrkOutputError as exc:
                return {"rps": None, "error": f"{exc} {result.stderr.strip()[-200:]}"}

        rounds: list[dict[str, Any]] = []

        def run_set(name: str, first_round: int, count: int, wanted: Sequence[str], pin: Pinning | None = None) -> None:
            """`count` interleaved rounds of the `wanted` paths each client has, numbered from `first_round`."""
            chosen = {client: [p for p in wanted if p in targets[client]] for client in CLIENTS}
            for client in CLIENTS:
                for path in chosen[client] if plan.wrk_warmup_seconds else ():
                    measure(client, path, plan.wrk_warmup_seconds, pin)
            for number in range(count):
                for client in CLIENTS:
                    for path in round_order(chosen[client], number):
                        result = measure(client, path, plan.wrk_seconds, pin)
                        rounds.append(
                            {"round": first_round + number, "set": name, "client": client, "path": path, **result}
                        )
                say(f"  {name} round {number + 1}/{count} done")

        run_set("iptables", 0, plan.rounds, IPTABLES_PATHS)
        pinning = pinning_for(os.sched_getaffinity(0), plan.pinned_rounds)
        if pinning.skipped:
            say(f"  pinned rounds skipped: {pinning.skipped}")
        else:
            everywhere = ",".join(map(str, sorted(os.sched_getaffinity(0))))
            _pin(lab, container.id, proxies, str(pinning.backend))
            try:
                run_set("pinned", 3 * plan.rounds, plan.pinned_rounds, plan.pinned_paths, pinning)
            finally:
                _pin(lab, container.id, proxies, everywhere)
        # The same port through the nftables backend: the host switched to it, and back to iptables after.
        switched = driver.switch_backend(lab, app_text, "nftables")
        for client in CLIENTS:
            targets[client]["nft"] = targets[client]["dnat"]
        targets["host"]["nft-addr"] = targets["host"]["dnat-addr"]
        for client in CLIENTS if plan.ipv6 else ():
            targets[client]["dnat6-nft"] = targets[client]["dnat6"]
        _wait_answers(targets["host"]["nft"])
        run_set("nftables", 2 * plan.rounds, plan.rounds, NFT_PATHS)
        switched += driver.switch_backend(lab, app_text, "iptables")
        # The split: the same external port, now shared 50/50 by two instances of the same server.
        driver.engine.deploy(APP, tags[1], actor="bench", canary_split=CanaryStart(50))
        for client in CLIENTS:
            targets[client]["split"] = targets[client]["dnat"]
        _wait_answers(targets["host"]["split"])
        run_set("split", plan.rounds, plan.rounds, SPLIT_PATHS)
        unpinned = [r for r in rounds if r["set"] != "pinned"]
        pinned = [r for r in rounds if r["set"] == "pinned"]
        return {
            "settings": {
                "tool": "wrk",
                "threads": plan.wrk_threads,
                "connections": plan.wrk_connections,
                "seconds": plan.wrk_seconds,
                "rounds": plan.rounds,
                "warmup_seconds": plan.wrk_warmup_seconds,
                "order": "each round runs every path for the host client, then for the outside client; "
                "the order of the paths is reversed in every other round; the sets of rounds run one after "
                "the other: iptables (unpinned), pinned, nftables, split",
                "ipv6": plan.ipv6,
                "ratios": "each IPv4 path to direct, each IPv6 path to direct6, of the same round",
            },
            "backend": {
                "image": f"{IMAGE}:{tags[0]}",
                "address": backend[0],
                "address6": backend6,
                "set_port": set_port,
            },
            "targets": targets,
            "notes": NOTES,
            "rounds": rounds,
            "summary": analysis.datapath_summary(unpinned),
            "pinned": {
                **pinning.as_dict(),
                "rounds": 0 if pinning.skipped else plan.pinned_rounds,
                "paths": list(plan.pinned_paths),
                "summary": analysis.datapath_summary(pinned),
            },
            "backend_switches": switched,
        }
    finally:
        for process in proxies:
            lab.stop(process)
        with contextlib.suppress(DeployerError):  # a gone Docker daemon: the run's cleanup does it later
            lab.remove_containers(APP)
        lab.remove_app_chains([APP])


def _pin(lab: Lab, container_id: str, proxies: Sequence[subprocess.Popen], cpus: str) -> None:
    """The backend container (Docker's cpuset, through the SDK) and every thread of each proxy onto `cpus`."""
    lab.docker.call("update", lambda: lab.docker.client.containers.get(container_id).update(cpuset_cpus=cpus))
    for process in proxies:
        lab.pin_group(process, {int(c) for c in cpus.split(",")})


def _wait_answers(target: str, timeout: float = 10.0) -> None:
    host, port = host_and_port(target)
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = http.client.HTTPConnection(host, port, timeout=1)
            connection.request("GET", "/")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on {target} after {timeout:g} s")
        time.sleep(0.1)
