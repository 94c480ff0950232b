"""Who deploys in a scenario: the real engine (ours, or with a baseline's netfilter adapter) or a baseline.

Each driver records its journal's events with the wall-clock moment the bench received them,
which the analysis lines up with the load clients' records.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.baselines import NoUdpCleanup, SeedRecipe, StopThenStart
from bench.lab import Lab
from bench.plan import deployer_toml
from deployer import config as config_module
from deployer.adapters.iptables import Netfilter
from deployer.config import Config
from deployer.journal import Journal
from deployer.wiring import build_engine


def bench_config(lab: Lab, app: str, app_text: str, backend: str = "iptables", *, ipv6: bool = False) -> Config:
    """A deployer config of its own for one app of this run: its state under the run's scratch folder; dual-stack
    with `ipv6` (the run's network must then be: `Lab(ipv6=True)`)."""
    root = lab.scratch / app
    (root / "hooks").mkdir(parents=True, exist_ok=True)
    path = root / "deployer.toml"
    path.write_text(deployer_toml(lab.names, root / "state", root / "hooks", [app_text], backend, ipv6=ipv6))
    return config_module.load(path)


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append({**event, "wall": time.time()})


class TimedWrites:
    """A netfilter adapter that reports when each rules write (an iptables-restore) ended.

    Everything else passes through to the adapter it wraps, so the engine sees the real one.
    """

    def __init__(self, inner: Netfilter, report: Recorder) -> None:
        self._inner = inner
        self._report = report
        self.texts: list[str] = []  # every transaction written, for the floor (see scale.py)

    def restore(self, text: str) -> None:
        self._inner.restore(text)
        self._report({"event": "netfilter.write"})
        self.texts.append(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class EngineDriver:
    """The deployer's engine, driven in-process as `deployer deploy` would drive it."""

    switch_steps = ("flip", "flip")

    def __init__(
        self, lab: Lab, app: str, app_text: str, *, netfilter: Netfilter | None = None, ipv6: bool = False
    ) -> None:
        self.app = app
        self.ipv6 = ipv6
        self.config = bench_config(lab, app, app_text, ipv6=ipv6)
        self.recorder = Recorder()
        journal = Journal([self.recorder], secrets=self.config.secrets())
        self.writes = TimedWrites(netfilter or Netfilter(), self.recorder)
        self.engine = build_engine(self.config, journal, docker=lab.docker, netfilter=self.writes)  # type: ignore[arg-type]

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.recorder.events

    def deploy(self, tag: str) -> None:
        self.engine.deploy(self.app, tag, actor="bench")

    def switch_backend(self, lab: Lab, app_text: str, backend: str) -> list[str]:
        """Rewrite the config with `backend` and reconcile, as an operator switches a host (docs/backends.md)."""
        config = bench_config(lab, self.app, app_text, backend, ipv6=self.ipv6)
        return build_engine(config, Journal([self.recorder]), docker=lab.docker).reconcile(self.app, actor="bench")


class BaselineDriver:
    def __init__(self, lab: Lab, app: str, app_text: str, kind: str, *, outside_address: str) -> None:
        self.app = app
        config = bench_config(lab, app, app_text)
        self.recorder = Recorder()
        journal = Journal([self.recorder])
        arguments = (config.settings, config.app(app), lab.docker, lab.netfilter, journal)
        if kind == "seed":
            self.baseline: SeedRecipe | StopThenStart = SeedRecipe(*arguments)
        elif kind == "stop-start":
            self.baseline = StopThenStart(*arguments, addresses=["127.0.0.1", outside_address])
        else:
            raise ValueError(f"no baseline {kind!r}")
        self.switch_steps = self.baseline.switch_steps

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.recorder.events

    def deploy(self, tag: str) -> None:
        self.baseline.deploy(tag)


def driver_for(lab: Lab, scenario: str, app_text: str, *, outside_address: str) -> EngineDriver | BaselineDriver:
    if scenario == "ours":
        return EngineDriver(lab, scenario, app_text)
    if scenario == "naive":
        return EngineDriver(lab, scenario, app_text, netfilter=NoUdpCleanup())
    return BaselineDriver(lab, scenario, app_text, scenario, outside_address=outside_address)


def scratch_path(lab: Lab, *parts: str) -> Path:
    path = lab.scratch.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
