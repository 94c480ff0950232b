"""Part 3, beside the flip: a reconcile of every app on a host of 1, 100, 1,000 and 10,000 apps.

`serve` reconciles every app at each start, before the worker takes its first job. The real engine does it here
(`Engine.reconcile`, its chains, its records on disk), over a table of the run's own: a backend that hands out
the iptables-save text of N healthy apps and counts its reads, and a Docker stand-in with one running instance
per app. Nothing touches netfilter or Docker, so it runs anywhere, as any user: `python -m bench.reconcile_scale`.

Each point is timed twice: the reconcile as `serve` runs it (one read of the table for all apps) and, up to
1,000 apps, one `reconcile APP` per app, which is what every app's reconcile cost when each read the table itself.
The backend's read is a string already made, so a real `iptables-save` (about 80 ms at 10,000 apps) adds its
own cost once per read: the reads column says how many a real host pays.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.lab import say
from deployer.config import Config, parse
from deployer.host.engine import Engine
from deployer.host.state import StateStore
from deployer.journal import Journal
from deployer.plan import app_chain, rules
from deployer.plan.containers import LABEL_APP, LABEL_SET, LABEL_TAG, ContainerInfo, selector
from deployer.plan.records import AppState, Instance

POINTS = (1, 100, 1000, 10000)
PER_APP_UP_TO = 1000  # one reconcile per app grows with the square: 10,000 would take minutes for one figure
NETWORK = "deployer"


def app_name(index: int) -> str:
    return f"a{index:05d}"


def address(index: int) -> str:
    return f"10.{index // 62500}.{index // 250 % 250}.{index % 250 + 1}"


class SavedTableBackend:
    """A table of the run's own: the nat table's text as iptables-save prints it, read by counting."""

    def __init__(self, text: str, chains: Mapping[str, list[str]]) -> None:
        self.text = text
        self.chains = chains
        self.reads = 0
        self.chain_reads = 0
        self.writes = 0

    def save_table(self, table: str) -> str:
        self.reads += 1
        return self.text if table == "nat" else f"*{table}\nCOMMIT\n"

    def list_chain(self, chain: str) -> list[str] | None:
        self.chain_reads += 1
        found = self.chains.get(chain)
        return None if found is None else list(found)

    def restore(self, text: str) -> None:
        self.writes += 1

    def conntrack_delete(self, arguments: list[str]) -> int:
        return 0

    def conntrack_list(self, arguments: list[str]) -> list[str]:
        return []

    def conntrack_timeout(self, name: str) -> int | None:
        return None

    def enable_route_localnet(self, interface: str) -> None:
        pass


class RunningInstances:
    """One running blue instance per app, found by the app's label as Docker's list filter finds it."""

    def __init__(self, instances: dict[str, ContainerInfo]) -> None:
        self.by_app = instances

    def containers(self, filters: Mapping[str, Any]) -> list[ContainerInfo]:
        wanted = [label.split("=", 1)[1] for label in filters.get("label", []) if label.startswith(f"{LABEL_APP}=")]
        if not wanted:
            return list(self.by_app.values())
        found = self.by_app.get(wanted[0])
        return [found] if found is not None else []

    def inspect(self, container_id: str) -> ContainerInfo | None:
        return next((c for c in self.by_app.values() if c.id == container_id), None)

    def ensure_network(
        self, name: str, bridge: str, ipv6_subnet: str | None = None, *, ipv6_required: bool = True
    ) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a reconcile of healthy apps called docker.{name}")


class Unused:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a reconcile of healthy apps used {name}")


def host_of(count: int, folder: Path) -> tuple[Config, SavedTableBackend, RunningInstances]:
    """`count` healthy apps: their config, records on disk, running instances and a table that matches them."""
    apps = {
        app_name(i): {
            "image": f"127.0.0.1:5000/{app_name(i)}",
            "health": {"type": "tcp", "port": 80},
            "ports": [{"external": 20000 + i, "container": 80, "blue": 40000 + i % 10000, "green": 50000 + i % 10000}],
        }
        for i in range(count)
    }
    (folder / "hooks").mkdir(parents=True, exist_ok=True)
    config = parse(
        {
            "deployer": {
                "state_dir": str(folder / "state"),
                "hooks_dir": str(folder / "hooks"),
                "network": NETWORK,
                "bridge": "deployer0",
            },
            "apps": apps,
        },
        path=folder / "deployer.toml",
        environ={},
    )
    store = StateStore(config.settings.state_dir)
    names = rules.ChainNames(config.settings.chain_prefix)
    instances, chains = {}, {}
    for i, (name, app) in enumerate(config.apps.items()):
        info = ContainerInfo(
            id=f"id-{name}",
            name=f"deployer-{name}-blue",
            status="running",
            exit_code=None,
            restart_count=0,
            labels={**_owner(config, name), LABEL_SET: "blue", LABEL_TAG: "v1"},
            addresses={NETWORK: address(i)},
        )
        state = AppState(app=name).promoted(
            Instance(
                port_set="blue",
                tag="v1",
                image=app.image,
                digest=None,
                container_id=info.id,
                container_name=info.name,
                address=address(i),
                since="2026-01-01T00:00:00Z",
            ),
            "2026-01-01T00:00:00Z",
        )
        store.save(state)
        instances[name] = info
        chains[name] = app_chain.for_record(names, app, state, config.settings.maintenance_port)
    table = applied(rules.render_restore(rules.SavedTable(), names, config.settings.bridge, chains))
    lines = [
        "*nat",
        *(f":{c} {'ACCEPT' if c in BUILTIN else '-'} [0:0]" for c in table),
        *(r for chain_rules in table.values() for r in chain_rules),
        "COMMIT",
        "",
    ]
    return config, SavedTableBackend("\n".join(lines), table), RunningInstances(instances)


BUILTIN = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")


def applied(text: str) -> dict[str, list[str]]:
    """An empty nat table after the restore `text`, chain -> rules, as iptables-save would list it."""
    table: dict[str, list[str]] = {c: [] for c in BUILTIN}
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if line.startswith(":"):
            table[line[1:].split(" ")[0]] = []
        elif word == "-A":
            table[rest.split(" ")[0]].append(line)
        elif word == "-I":
            chain, _, body = rest.partition(" 1 ")
            table[chain].insert(0, f"-A {chain} {body}")
    return table


def _owner(config: Config, app: str) -> dict[str, str]:
    return dict(label.split("=", 1) for label in selector(config.settings, app)["label"])


def engine_for(config: Config, backend: SavedTableBackend, docker: RunningInstances) -> Engine:
    return Engine(
        config,
        docker,
        backend,
        routing=Unused(),
        prober=Unused(),
        run_hook=Unused(),
        journal=Journal([lambda event: None]),
        environ={},
    )


def measure(count: int, *, per_app: bool) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="deployer-bench-reconcile-"))
    try:
        config, backend, docker = host_of(count, folder)
        engine = engine_for(config, backend, docker)
        started = time.perf_counter()
        repairs = engine.reconcile(actor="bench")
        elapsed = time.perf_counter() - started
        assert repairs == [] and backend.writes == 0, repairs[:3]
        point: dict[str, Any] = {
            "apps": count,
            "reconcile_ms": round(elapsed * 1000, 1),
            "reads": backend.reads,
            "chain_reads": backend.chain_reads,
            "ms_per_app": round(elapsed * 1000 / count, 3),
        }
        if per_app:
            backend.reads = 0
            started = time.perf_counter()
            for name in config.apps:
                engine.reconcile(name, actor="bench")
            elapsed = time.perf_counter() - started
            point.update({"one_read_per_app_ms": round(elapsed * 1000, 1), "one_read_per_app_reads": backend.reads})
        return point
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_reconcile_scale(points: tuple[int, ...] = POINTS, *, per_app_up_to: int = PER_APP_UP_TO) -> dict[str, Any]:
    figures = []
    for count in points:
        point = measure(count, per_app=count <= per_app_up_to)
        figures.append(point)
        say(
            f"  reconcile of {count} apps: {point['reconcile_ms']} ms, {point['reads']} read(s) of the table"
            + (f"; one read per app: {point['one_read_per_app_ms']} ms" if "one_read_per_app_ms" in point else "")
        )
    first, last = figures[0], figures[-1]
    return {
        "settings": {
            "points": list(points),
            "table": "iptables-save text of N healthy apps, read from memory",
            "one_read_per_app": f"up to {per_app_up_to} apps",
        },
        "points": figures,
        # Linear or better: the cost of one app at the largest point over its cost at the smallest above 1.
        "summary": {
            "reads": sorted({p["reads"] for p in figures}),
            "per_app_growth": round(
                last["ms_per_app"] / max(next((p for p in figures if p["apps"] >= 100), first)["ms_per_app"], 1e-6), 2
            ),
        },
    }


if __name__ == "__main__":
    json.dump(run_reconcile_scale(tuple(int(a) for a in sys.argv[1:]) or POINTS), sys.stdout, indent=2)
    print()
