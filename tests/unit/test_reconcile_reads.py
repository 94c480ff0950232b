"""A reconcile of every app reads the nat table once, whatever the number of apps.

`serve` reconciles every app at each start: one read of the whole table per app grew with the square of the apps
(some 800 s before the first job on a host of 10,000). The table is read once; an app whose chain in that read is
not what its record calls for has its own chain read again, and only that.
"""

from __future__ import annotations

import pytest

from deployer.config import parse
from deployer.host.engine import Engine
from deployer.host.reconcile import reconcile_app
from deployer.journal import Journal
from support.engine_fakes import Effects, FakeClock, FakeDocker, FakeNetfilter, FakeProber, NoRouting


class CountingNetfilter(FakeNetfilter):
    def __init__(self, effects: Effects) -> None:
        super().__init__(effects)
        self.saved: list[str] = []

    def save_table(self, table: str) -> str:
        self.saved.append(table)
        return super().save_table(table)


def app(index: int) -> dict:
    base = 20000 + 10 * index
    return {
        "image": f"127.0.0.1:5000/app{index}",
        "drain_seconds": 0,
        "stop_timeout": 1,
        "health": {"type": "http", "port": 80, "path": "/health", "interval": 1, "successes": 1, "deadline": 3},
        "ports": [{"external": base, "container": 80, "blue": base + 1, "green": base + 2}],
    }


class Apps:
    """A host of `count` apps, each deployed once through the engine."""

    def __init__(self, tmp_path, count: int) -> None:
        self.effects = Effects()
        self.netfilter = CountingNetfilter(self.effects)
        self.docker = FakeDocker(self.effects)
        self.prober = FakeProber(self.effects)
        self.clock = FakeClock()
        (tmp_path / "hooks").mkdir()
        data = {
            "deployer": {
                "state_dir": str(tmp_path / "state"),
                "hooks_dir": str(tmp_path / "hooks"),
                "network": "deployer",
                "bridge": "deployer0",
            },
            "apps": {f"app{i}": app(i) for i in range(count)},
        }
        self.config = parse(data, path=tmp_path / "deployer.toml", environ={})
        for name in self.config.apps:
            self.engine().deploy(name, "v1", actor="cli:ann")
        self.netfilter.saved.clear()
        self.netfilter.reads.clear()

    def engine(self) -> Engine:
        return Engine(
            self.config,
            self.docker,
            self.netfilter,
            routing=NoRouting(),
            prober=self.prober,
            run_hook=lambda *a: None,
            journal=Journal([lambda event: None], clock=self.clock),
            environ={},
            clock=self.clock,
            sleep=self.clock.sleep,
        )


@pytest.mark.parametrize("count", [1, 3, 12])
def test_a_reconcile_of_every_app_reads_the_table_once(tmp_path, count):
    apps = Apps(tmp_path, count)
    assert apps.engine().reconcile(actor="cli:ann") == []
    assert apps.netfilter.saved == ["nat"]
    assert apps.netfilter.reads == []  # every chain was as its record says: no chain read either


@pytest.mark.parametrize("count", [3, 12])
def test_an_app_to_repair_gets_its_own_chain_read_again_and_only_it(tmp_path, count):
    apps = Apps(tmp_path, count)
    apps.netfilter.tables["nat"]["DEPLOYER-app1"] = []  # emptied by hand
    before = {c: list(r) for c, r in apps.netfilter.tables["nat"].items() if c != "DEPLOYER-app1"}
    repairs = apps.engine().reconcile(actor="cli:ann")
    assert len(repairs) == 1 and repairs[0].startswith("rules of app1 pointed at blue ")
    assert apps.netfilter.saved == ["nat"]
    assert apps.netfilter.reads == ["DEPLOYER-app1", "DEPLOYER-app1"]  # the reconcile's read, then the flip's
    assert {c: r for c, r in apps.netfilter.tables["nat"].items() if c != "DEPLOYER-app1"} == before


def test_an_app_changed_after_the_read_is_chosen_from_its_chain_as_it_is_now(tmp_path):
    """A deploy that finished between the shared read and the app's turn: the new instance keeps serving."""
    apps = Apps(tmp_path, 2)
    engine = apps.engine()
    stale = engine.chains.table("nat")
    engine.deploy("app0", "v2", actor="cli:ann")
    served = apps.netfilter.tables["nat"]["DEPLOYER-app0"]
    assert "green v2" in served[0]
    assert reconcile_app(engine, engine.config.app("app0"), actor="cli:ann", live=stale) == []
    assert apps.netfilter.tables["nat"]["DEPLOYER-app0"] == served


def test_a_reconcile_of_one_app_reads_the_table_once(tmp_path):
    apps = Apps(tmp_path, 3)
    assert apps.engine().reconcile("app2", actor="cli:ann") == []
    assert apps.netfilter.saved == ["nat"]
