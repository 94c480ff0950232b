"""The deployer's netfilter transactions on one host: one component that deploys, modes and forwarding share.

It holds the netfilter lock around every read-render-restore (a render is only valid for the rules it read),
flips an app's chain (add-only takeover, then a tidy rewrite whose commit proves the result, the old rules put
back on failure; a deploy tidies after its timed flip), ensures the base chains and jumps, deletes conntrack
flows after a commit and waits for old flows to end. The rendering is plan/'s; the commands are the backend's.
The backend is a Protocol (backend.py), so another one (host/netfilter/nftables.py, or a test's fake) can take
iptables-restore's place without touching the engine; after a switch, the other one is `retired` until reconcile
empties it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployer.config import AppConfig, Settings
from deployer.errors import RulesError
from deployer.host.locks import LOCKS, AppLock, HostLock
from deployer.host.netfilter.backend import BridgeNetwork, NetfilterBackend
from deployer.journal import utc_now
from deployer.plan import app_chain, rules
from deployer.plan.records import AppState
from deployer.plan.rules import SavedTable

Render = Callable[..., "str | None"]


class Chains:
    def __init__(
        self,
        backend: NetfilterBackend,
        network: BridgeNetwork,
        settings: Settings,
        *,
        retired: NetfilterBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = backend
        self.retired = retired  # the other backend, whose rules a switched host still holds until reconcile
        self.network = network
        self.settings = settings
        self.names = rules.ChainNames(settings.chain_prefix)
        self.clock = clock
        self.sleep = sleep
        self.shadowed: dict[str, list[str]] = {}  # app -> its wanted rules, with shadowed rules left behind them

    # --- locks ---------------------------------------------------------------------------------

    def lock(self) -> HostLock:
        """Serialise read-render-restore across deployer processes. Not reentrant: take it once."""
        return HostLock(self.lock_path("netfilter"), wait=self.settings.host_lock_wait)

    def app_lock(self, app: str, *, wait: float | None = None, **holder: Any) -> AppLock:
        """The app's own lock: a deploy, a mode change and a forward of one app never interleave."""
        return AppLock(
            self.settings.state_dir, app, wait=self.settings.lock_wait if wait is None else wait, holder=holder
        )

    def lock_path(self, name: str) -> Path:
        return Path(self.settings.state_dir) / LOCKS / f"{name}.lock"

    # --- reading and rendering -------------------------------------------------------------------

    def table(self, name: str) -> SavedTable:
        """One table as it is now (nat, filter or mangle), parsed."""
        return rules.parse_table(self.backend.save_table(name), name)

    def chain(self, app: str) -> list[str] | None:
        """The app's chain as it is now; None when it does not exist."""
        return self.backend.list_chain(self.names.app(app))

    def wanted(self, app: AppConfig, state: AppState) -> list[str]:
        """The app chain the record calls for (see app_chain.for_record)."""
        return app_chain.for_record(self.names, app, state, self.settings.maintenance_port)

    def base_missing(self, live: SavedTable, app: AppConfig) -> bool:
        """Whether any of the jumps, the POSTROUTING chain or the app's chain is missing from `live`."""
        text = rules.render_restore(live, self.names, self.settings.bridge, {}, ensure_apps=[app.name])
        return text.strip() != "*nat\nCOMMIT"

    # --- changes -------------------------------------------------------------------------------

    def rewrite(self, render: Render, *tables: str) -> str | None:
        """Under the lock, read `tables`, render a transaction from them and restore it; the text, or None if
        there was nothing to change."""
        with self.lock():
            text = render(*(self.table(name) for name in tables))
            if text:
                self.backend.restore(text)
        return text or None

    def teardown(self) -> bool:
        """Remove every nat chain the deployer owns, from both backends; whether there was any."""
        removed = False
        for backend in (self.backend, self.retired):
            if backend is not None:
                with self.lock():
                    text = rules.render_teardown(rules.parse_table(backend.save_table("nat"), "nat"), self.names)
                    if text:
                        backend.restore(text)
                        removed = True
        return removed

    def prepare_bridge(self) -> None:
        """The deployer's Docker network, and loopback clients allowed through its bridge."""
        self.network.ensure_network(self.settings.network, self.settings.bridge)
        self.backend.enable_route_localnet(self.settings.bridge)

    def ensure_base(self, app: AppConfig, *, locked: bool = False) -> None:
        """Add whatever is missing of the jumps, the POSTROUTING chain and the app's (empty) chain."""
        if not locked:
            with self.lock():
                self.ensure_base(app, locked=True)
            return
        self.prepare_bridge()
        live = self.table("nat")
        if self.base_missing(live, app):
            self.backend.restore(
                rules.render_restore(live, self.names, self.settings.bridge, {}, ensure_apps=[app.name])
            )

    def flip(
        self, app: AppConfig, wanted: list[str], detail: dict[str, Any] | None = None, *, tidy: bool = True
    ) -> set[str]:
        """Make `wanted` the app's rules in one transaction; put the old rules back on failure.

        Touches the app's own chain only, so its cost does not grow with the number of apps. `detail`, when
        given, gets the commit's duration and time. Returns the addresses the rules pointed at before and no
        longer do.

        The chain is read once, before the move, and not read back after it. The move is add-only: the wanted
        rules go in front, and the first matching rule wins, so its commit proves that every new flow takes
        them. The tidy then declares the chain (which flushes it) and appends exactly `wanted`; iptables-restore
        commits a transaction whole or not at all, so a commit proves the chain holds `wanted`, as rendered, and
        a refusal puts `before` back. That the rendering is the text iptables-save prints is the rendering's
        contract (tests/unit/test_rules_rendering.py, and the drift check of every reconcile).

        `tidy=False` leaves the tidy to `tidy()`, after the flip's timed step: a transaction that deletes rules
        waits 13 to 20 ms after its commit here (docs/benchmarks.md), and the traffic has already moved. A
        crash before it leaves shadowed rules that match nothing new; reconcile removes them.
        """
        chain = self.names.app(app.name)
        with self.lock():
            before = self.backend.list_chain(chain)
            if before is None:
                self.ensure_base(app, locked=True)
                before = []
            if before == wanted:
                return set()
            if before[: len(wanted)] == wanted:  # an earlier flip's move, untidied: only the tidy is left
                self.shadowed.pop(app.name, None)
                self.rewrite_chain(app, wanted, before)
                return rules.dnat_destinations(before) - rules.dnat_destinations(wanted)
            started = self.clock()
            # Add-only when there are rules to shadow: new flows move at the commit; the tidy comes after.
            self.backend.restore(rules.render_takeover(self.names, app.name, wanted, before))
            if detail is not None:
                detail["committed_ms"] = round((self.clock() - started) * 1000, 2)
                detail["committed_at"] = utc_now()
            if before and tidy:
                self.rewrite_chain(app, wanted, before)
            elif before:
                self.shadowed[app.name] = list(wanted)
        return rules.dnat_destinations(before) - rules.dnat_destinations(wanted)

    def rewrite_chain(self, app: AppConfig, wanted: list[str], before: list[str]) -> None:
        """The app's chain rewritten to `wanted`; `before` put back if that is refused. Under the lock."""
        try:
            self.backend.restore(rules.render_chain(self.names, app.name, wanted))
        except RulesError as exc:
            self.backend.restore(rules.render_chain(self.names, app.name, before))
            raise RulesError(f"{exc}; the previous rules were restored", app=app.name) from None

    def tidy(self, app: AppConfig) -> bool:
        """Drop the rules that a `flip(tidy=False)` left shadowed; whether there were any.

        The caller still holds the app's lock, so the chain is what that flip made: no read is needed. A
        refusal leaves the wanted rules in front, still serving, and the shadowed ones to reconcile.
        """
        wanted = self.shadowed.pop(app.name, None)
        if wanted is None:
            return False
        with self.lock():
            self.backend.restore(rules.render_chain(self.names, app.name, wanted))
        return True

    def retire_other(self, app: AppConfig) -> list[str]:
        """Remove the app's rules from the other backend, once this one's serve it; and that backend's base
        chains with its last app. What was removed.

        The order makes a switch of backends safe under load (docs/backends.md): the new backend's rules are
        written first, and while both hold the app, new flows take the nftables table's DNAT (it hooks at
        priority -105, before iptables-nft's nat chains at -100), so no moment is without one.
        """
        other, chain = self.retired, self.names.app(app.name)
        if other is None or other.list_chain(chain) is None:
            return []
        removed = []
        with self.lock():
            live = rules.parse_table(other.save_table("nat"), "nat")
            text = rules.render_removal(live, self.names, [app.name])
            if text:
                other.restore(text)
                removed.append(f"{chain} removed from the previous backend")
            live = rules.parse_table(other.save_table("nat"), "nat")
            if not any(self.names.owns(c) and c not in (self.names.top, self.names.postrouting) for c in live.chains):
                teardown = rules.render_teardown(live, self.names)
                if teardown:
                    other.restore(teardown)
                    removed.append("the previous backend's base chains removed")
        return removed

    # --- conntrack -----------------------------------------------------------------------------

    def clean_flows(self, filters: list[list[str]]) -> int:
        """Delete the conntrack entries matching each filter; how many went."""
        return sum(self.backend.conntrack_delete(f) for f in filters)

    def flows(self, filters: list[list[str]]) -> list[str]:
        """The conntrack entries matching each filter, as `conntrack -L` prints them."""
        return [line for f in filters for line in self.backend.conntrack_list(f)]

    def count_flows(self, filters: list[list[str]]) -> int:
        return sum(len(self.backend.conntrack_list(f)) for f in filters)

    def wait_for_old_flows(self, filters: list[list[str]], seconds: float) -> int:
        """Wait up to `seconds` for the flows matching `filters` to end, returning early once none is left.

        What a retired instance, a forward or a return path is given to finish its open connections; returns
        how many were still open.
        """
        deadline = self.clock() + seconds
        while True:
            remaining = self.count_flows(filters)
            if remaining == 0 or self.clock() >= deadline:
                return remaining
            self.sleep(min(0.25, max(0.0, deadline - self.clock())))

    def conntrack_timeout(self, name: str, default: int) -> int:
        timeout = self.backend.conntrack_timeout(name)
        return default if timeout is None else timeout
