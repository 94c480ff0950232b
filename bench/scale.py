"""Part 3: the flip time of one app while 1, 10, 100 and 1,000 other apps have rules installed; and beside it a
reconcile of every app on a host of 1 to 10,000 apps (bench/reconcile_scale.py).

Beside each point's flips, the floor: the same add-only text a flip committed, aimed at a chain of its own and
given to a bare `iptables-restore --noflush` (`subprocess.run`, nothing else around it), so the commit's cost
over the tool itself is read as a ratio in the same run, whatever the machine.

The other apps are stand-ins: their chains and jumps, rendered by `deployer.rules` and
installed in one transaction per point, under the run's own chain prefix. They get no
containers and no traffic. The measured app is deployed by the real engine, back and forth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import analysis
from bench.drivers import EngineDriver
from bench.lab import IMAGE, Lab, say
from bench.plan import Plan, app_toml, filler_chains, filler_name, visits
from bench.reconcile_scale import run_reconcile_scale
from deployer.errors import DeployerError
from deployer.plan import rules

APP = "flip"


def run_scale(lab: Lab, plan: Plan, tags: list[str]) -> dict[str, Any]:
    assert lab.ports is not None
    driver = EngineDriver(lab, APP, app_toml(APP, IMAGE, lab.ports.scale, drain_seconds=0.3, stop_timeout=3))
    names = rules.ChainNames(lab.names.prefix)
    installed = 0
    figures: dict[int, dict[str, list[float]]] = {}
    install_ms: dict[int, float] = {}
    try:
        driver.deploy(tags[0])
        next_tag = itertools.cycle([tags[1], tags[0]])
        for point, flips in visits(plan.scale_points, plan.flips_per_point):
            started = time.monotonic()
            live = rules.parse_nat(lab.netfilter.save_nat())
            if point > installed:
                chains = filler_chains(lab.names, lab.ports, range(installed, point))
                lab.netfilter.restore(rules.render_restore(live, names, lab.names.bridge, chains))
                install_ms[point] = round((time.monotonic() - started) * 1000, 1)
            elif point < installed:
                text = rules.render_removal(live, names, [filler_name(i) for i in range(point, installed)])
                if text:
                    lab.netfilter.restore(text)
            installed = point
            mark = len(driver.events)
            for _ in range(flips):
                driver.deploy(next(next_tag))
            events = driver.events[mark:]
            flip_events = analysis.steps(events, "flip")
            entry = figures.setdefault(point, {"committed_ms": [], "flip_step_ms": [], "deploy_ms": [], "floor_ms": []})
            entry["committed_ms"] += [e["committed_ms"] for e in flip_events if "committed_ms" in e]
            entry["flip_step_ms"] += [e["duration_ms"] for e in flip_events]
            entry["deploy_ms"] += analysis.deploy_durations(events, since=0)
            entry["floor_ms"] += floor_ms(lab, names, _last_takeover(driver.writes.texts, names.app(APP)), flips)
            say(
                f"  {point} other apps: flip commit median {analysis.summary(entry['committed_ms'])['median']} ms "
                f"over {len(entry['committed_ms'])} flips; floor {analysis.summary(entry['floor_ms'])['median']} ms"
            )
        points = [{"other_apps": p, "install_ms": install_ms.get(p), **figures[p]} for p in plan.scale_points]
        return {
            "settings": {
                "points": list(plan.scale_points),
                "flips_per_point": plan.flips_per_point,
                "order": "up from 1 to the largest point, then back down, half the flips each way",
                "stand_ins": "one chain with one DNAT rule each, and its jump, under the run's prefix",
                "floor": f"a bare iptables-restore --noflush of a flip's add-only text, into {FLOOR}",
            },
            "points": points,
            "summary": analysis.scale_summary(points),
            "nftables": run_nft_scale(lab, plan.nft_points),
            "reconcile": run_reconcile_scale(plan.reconcile_points, per_app_up_to=plan.one_read_per_app_up_to),
        }
    finally:
        with contextlib.suppress(DeployerError):  # a gone Docker daemon: the run's cleanup does it later
            lab.remove_containers(APP)
        lab.remove_app_chains([APP, *(filler_name(i) for i in range(installed))])


FLOOR = "floor"


def _last_takeover(texts: list[str], chain: str) -> str | None:
    """The add-only text of the latest flip (`-I CHAIN 1 ...` lines only); None before any."""
    return next((t for t in reversed(texts) if f"\n-I {chain} 1 " in t), None)


def floor_ms(lab: Lab, names: rules.ChainNames, takeover: str | None, runs: int) -> list[float]:
    """Each run's time of the bare tool committing `takeover`, aimed at a chain no jump leads to."""
    if takeover is None:
        return []
    chain = names.app(FLOOR)
    text = takeover.replace(f"-I {names.app(APP)} 1 ", f"-I {chain} 1 ")
    lab.netfilter.restore(rules.render_chain(names, FLOOR, []))
    times = []
    try:
        for _ in range(max(runs, 5)):
            started = time.perf_counter()
            subprocess.run(["iptables-restore", "--noflush"], input=text, text=True, check=True)
            times.append(round((time.perf_counter() - started) * 1000, 2))
            lab.netfilter.restore(rules.render_chain(names, FLOOR, []))  # untimed: the next run starts empty
    finally:
        lab.netfilter.restore(f"*nat\n-F {chain}\n-X {chain}\nCOMMIT\n")
    return times


class BackendFlips:
    """The nftables backend's own flip (host/netfilter/nftables.py), in a table of the run's own without base chains, so
    no packet meets it. Each flip does what `Chains.flip` does on it: read the app's chain, the add-only
    takeover (the commit), then the tidy. The other apps are elements of the same maps, as on a host."""

    def __init__(self, lab: Lab) -> None:
        from deployer.adapters.nftables import Nftables
        from deployer.host.netfilter.nftables import NftablesBackend
        from deployer.plan import nft

        self.names = rules.ChainNames(lab.names.prefix)
        self.runner, self.reader = Nftables(), Nftables(handles=True)
        self.table = f"{nft.table_name(lab.names.prefix)}-backend"
        self.state = Path(tempfile.mkdtemp(prefix="deployer-bench-nft-"))
        ports = {APP: [("tcp", 1), ("udp", 2)]}
        self.backend = NftablesBackend(
            self.runner,
            lab.netfilter,
            table=self.table,
            prefix=lab.names.prefix,
            reader=self.reader,
            generation=self.state / "nftables.generation",
            ports=lambda app: ports.get(app, ()),
        )
        self.installed = 0
        self.current = self.rules(0)
        self.backend.restore(rules.render_chain(self.names, APP, self.current))

    def rules(self, i: int) -> list[str]:
        return [
            rules.Forward(p, n, f"10.255.255.{i % 2 + 3}", 80, f"{APP} {i}").rule(self.names.app(APP))
            for p, n in (("tcp", 1), ("udp", 2))
        ]

    def at(self, point: int, flips: int) -> dict[str, list[float]]:
        for start in range(self.installed, point, 1000):
            stop = min(point, start + 1000)
            self.backend.restore(
                "".join(
                    rules.render_chain(
                        self.names,
                        filler_name(i),
                        [
                            rules.Forward("tcp", 10 + i, "10.255.255.9", 80, filler_name(i)).rule(
                                self.names.app(filler_name(i))
                            )
                        ],
                    )
                    for i in range(start, stop)
                )
            )
        self.installed = point
        self.backend.list_chain(self.names.app(APP))  # as a deployer process that has read the table once
        committed, steps = [], []
        for i in range(flips):
            wanted = self.rules(i + 1)
            started = time.perf_counter()
            before = self.backend.list_chain(self.names.app(APP)) or []
            moved = time.perf_counter()
            self.backend.restore(rules.render_takeover(self.names, APP, wanted, before))
            committed.append(round((time.perf_counter() - moved) * 1000, 3))
            self.backend.restore(rules.render_chain(self.names, APP, wanted))
            steps.append(round((time.perf_counter() - started) * 1000, 3))
            self.current = wanted
        return {"backend_committed_ms": committed, "backend_step_ms": steps}

    def close(self) -> None:
        with contextlib.suppress(DeployerError):
            self.runner.run(f"delete table ip {self.table}\n")
        self.runner.close()
        self.reader.close()
        shutil.rmtree(self.state, ignore_errors=True)


NFT_FLIPS = 30


def run_nft_scale(lab: Lab, sizes: tuple[int, ...], flips: int = NFT_FLIPS) -> dict[str, Any]:
    """The nftables flip (plan/nft/'s transaction, through libnftables in process) with 1 to 10,000 other
    apps' ports in the maps. A table of the run's own with maps only and no hooks: no packet can meet it."""
    from deployer.adapters.nftables import Nftables
    from deployer.plan import nft

    nftables = Nftables()
    table = f"{nft.table_name(lab.names.prefix)}-scale"
    app = [
        nft.element(rules.Forward("tcp", 1, "10.255.255.2", 80, APP)),
        nft.element(rules.Forward("udp", 2, "10.255.255.2", 53, APP)),
    ]
    points: list[dict[str, Any]] = []
    backend: BackendFlips | None = None
    try:
        nftables.run("\n".join([*nft.map_declarations(table), *nft.add_elements(table, app), ""]))
        installed = 0
        for point in sizes:
            others = [
                nft.element(rules.Forward("tcp", 10 + i, f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 80, "f"))
                for i in range(installed, point)
            ]
            for start in range(0, len(others), 1000):
                nftables.run("\n".join([*nft.add_elements(table, others[start : start + 1000]), ""]))
            installed = point
            times, current = [], app
            for i in range(flips):
                wanted = [
                    dataclasses.replace(e, value=f"10.255.255.{i % 2 + 3} . {e.value.split(' . ')[1]}") for e in app
                ]
                text = nft.render_replace(table, current, wanted)
                started = time.perf_counter()
                nftables.run(text or "")
                times.append(round((time.perf_counter() - started) * 1000, 3))
                current = wanted
            points.append({"other_apps": point, "committed_ms": times})
            say(f"  nftables, {point} other apps: flip commit median {analysis.summary(times, 3)['median']} ms")
        # nft reads every set of every table before a command: the floor's table goes before the backend's comes.
        nftables.run(f"delete table ip {table}\n")
        backend = BackendFlips(lab)
        for entry in points:
            entry.update(backend.at(entry["other_apps"], flips))
            say(
                f"  nftables backend, {entry['other_apps']} other apps: flip commit median "
                f"{analysis.summary(entry['backend_committed_ms'], 3)['median']} ms"
            )
    finally:
        with contextlib.suppress(DeployerError):
            nftables.run(f"delete table ip {table}\n")
        if backend is not None:
            backend.close()
        nftables.close()
    return {
        "settings": {
            "points": list(sizes),
            "flips_per_point": flips,
            "table": "maps only, no hooks: the element replace of plan/nft.py, bare, in process",
        },
        "points": points,
        "summary": analysis.nft_scale_summary(points),
    }
