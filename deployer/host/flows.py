"""The worker's sample of every app's live flows and live container's health, for the console: one `conntrack -L`
and one container list for all apps, counted by deployer/plan/flows.py, and the records read from disk."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from deployer.config import Config
from deployer.errors import DeployerError
from deployer.host.state import StateStore
from deployer.plan import flows


class FlowSampler:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        conntrack: Callable[[], list[str]],  # every entry of the table, as `conntrack -L` prints them
        containers: Callable[[], Mapping[str, tuple[str, str]]],  # id -> (state, status) of the deployer's containers
    ) -> None:
        self.config = config
        self.store = store
        self.conntrack = conntrack
        self.containers = containers

    def sample(self) -> dict[str, dict[str, Any]]:
        """app -> its instances' flows and the live container's health (None: Docker did not answer); an app with
        nothing live has no entry. A conntrack that fails fails the sample: no figure is made up."""
        states = [self.store.load(name) for name in sorted(self.config.apps)]
        counts = flows.count(self.conntrack(), flows.targets(self.config.apps, states))
        try:
            listed: Mapping[str, tuple[str, str]] | None = self.containers()
        except DeployerError:
            listed = None
        found = {}
        for state in states:
            if state.active is None:
                continue
            health = None if listed is None else flows.health(*listed.get(state.active.container_id, (None, None)))
            found[state.app] = {**counts.get(state.app, {}), "health": health}
        return found
