"""The deployer's netfilter transactions on one host: one component that deploys, modes and forwarding share.

It holds the netfilter lock around every read-render-restore (a render is only valid for the rules it read),
flips an app's chain (add-only takeover, then a tidy rewrite whose commit proves the result, the old rules put
back on failure; a deploy tidies after its timed flip), ensures the base chains and jumps, deletes conntrack
flows after a commit and waits for old flows to end. The rendering is plan/'s; the commands are the backend's.
The backend is a Protocol (backend.py), so another one (host/netfilter/nftables.py, or a test's fake) can take
iptables-restore's place without touching the engine; after a switch, the other one is `retired` until reconcile
empties it.

On a dual-stack host (`[deployer] ipv6`) a second backend holds the IPv6 rules, and every change here is made in
both families from one rendering: the IPv6 chain is the IPv4 one with each instance's IPv6 address
(plan/rules.for_ipv6), conntrack filters get their IPv6 twins, and a flip moves both. On nftables both tables
change in one transaction (`restore_pair`); on iptables, ip6tables-restore commits first and iptables-restore
second, and a crash between them leaves the IPv6 chain ahead of the IPv4 one, serving, until the next start's
reconcile finds the drift and rewrites it (docs/ipv6.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deployer.config import AppConfig, Settings
from deployer.errors import DeployerError, RulesError
from deployer.host.locks import LOCKS, AppLock, HostLock
from deployer.host.netfilter.backend import BridgeNetwork, NetfilterBackend
from deployer.journal import utc_now
from deployer.plan import app_chain, conntrack, rules
from deployer.plan.records import AppState
from deployer.plan.rules import SavedTable

Render = Callable[..., "str | None"]
log = logging.getLogger(__name__)


class Chains:
    def __init__(
        self,
        backend: NetfilterBackend,
        network: BridgeNetwork,
        settings: Settings,
        *,
        retired: NetfilterBackend | None = None,
        backend6: NetfilterBackend | None = None,
        leftovers6: Sequence[NetfilterBackend] = (),
        forwarding6: Callable[[], list[str]] | None = None,
        host_changed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = backend
        self.retired = retired  # the other backend, whose rules a switched host still holds until reconcile
        self.backend6 = backend6  # the IPv6 rules' backend, on a dual-stack host
        # The IPv6 backends not in use, where IPv6 rules of an earlier config may be left (uninstall looks there).
        self.leftovers6 = tuple(leftovers6)
        # Turns the host's IPv6 forwarding on safely (host/ipv6_forwarding.py), on a dual-stack host.
        self.forwarding6 = forwarding6
        self.forwarding6_done = False  # once a process for the instances; a forward asks again
        # Told each change to the host's own settings (a sysctl), for the audit log.
        self.host_changed = host_changed or (lambda change: log.warning("host setting changed: %s", change))
        self.ipv6_of: dict[str, str] = {}  # instance IPv4 address -> its IPv6 twin, as Docker last said
        self.network = network
        self.settings = settings
        self.names = rules.ChainNames(settings.chain_prefix)
        self.clock = clock
        self.sleep = sleep
        # app -> (backend, its wanted rules) of each family whose chain has shadowed rules left behind them
        self.shadowed: dict[str, list[tuple[NetfilterBackend, list[str]]]] = {}

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

    def table(self, name: str, *, ipv6: bool = False) -> SavedTable:
        """One table as it is now (nat, filter or mangle), parsed; `ipv6`: the IPv6 backend's (a dual-stack host's)."""
        backend = self.backend6 if ipv6 else self.backend
        assert backend is not None, "an IPv6 table is read on a dual-stack host only"
        return rules.parse_table(backend.save_table(name), name)

    def chain(self, app: str) -> list[str] | None:
        """The app's chain as it is now; None when it does not exist."""
        return self.backend.list_chain(self.names.app(app))

    def wanted(self, app: AppConfig, state: AppState) -> list[str]:
        """The app chain the record calls for (see app_chain.for_record)."""
        return app_chain.for_record(self.names, app, state, self.settings.maintenance_port)

    def base_missing(self, live: SavedTable, app: AppConfig) -> bool:
        """Whether any of the jumps, the POSTROUTING chain or the app's chain is missing from `live` (and, on a
        dual-stack host, from the IPv6 table, read here)."""
        text = rules.render_restore(live, self.names, self.settings.bridge, {}, ensure_apps=[app.name])
        if text.strip() != "*nat\nCOMMIT":
            return True
        return self.backend6 is not None and self._base_text6(app) is not None

    def _base_text6(self, app: AppConfig) -> str | None:
        """What the IPv6 table lacks of the base chains, jumps and the app's chain, as a transaction; None: nothing."""
        assert self.backend6 is not None
        live6 = rules.parse_table(self.backend6.save_table("nat"), "nat")
        text = rules.render_restore(live6, self.names, self.settings.bridge, {}, ensure_apps=[app.name], ipv6=True)
        return None if text.strip() == "*nat\nCOMMIT" else text

    # --- IPv6 ----------------------------------------------------------------------------------

    @property
    def ipv6_subnet(self) -> str | None:
        """The Docker network's IPv6 subnet on a dual-stack host; None on an IPv4 one."""
        return self.settings.ipv6_subnet if self.backend6 is not None else None

    def dual(self, app: AppConfig) -> bool:
        """Whether the app's IPv6 clients are served: a dual-stack host, and an app that has not opted out."""
        return self.backend6 is not None and app.ipv6

    def twins(self, addresses: Iterable[str], *, fresh: bool = False) -> dict[str, str]:
        """The IPv6 twin of each instance address known; Docker is asked when one of `addresses` is not, or always
        with `fresh` (rules: an IPv4 address Docker gave a container before may have a new twin now). A Docker that
        does not answer leaves what was known (an address with no twin then has no IPv6 rule)."""
        wanted = set(addresses)
        if fresh or not wanted <= set(self.ipv6_of):
            try:
                self.ipv6_of.update(self.network.addresses6(self.settings.network))
            except DeployerError as exc:
                log.warning("the instances' IPv6 addresses are unknown, Docker did not say: %s", exc)
        return {address: self.ipv6_of[address] for address in wanted if address in self.ipv6_of}

    def learn_twin(self, address: str, address6: str | None) -> None:
        """An instance's IPv6 twin as its record keeps it: Docker forgets a dead instance's addresses, and its
        IPv6 flows still need their filters (a failover's cleanup)."""
        if address6:
            self.ipv6_of.setdefault(address, address6)

    def wanted6(self, app: AppConfig, wanted: list[str], extra6: Mapping[str, str] | None = None) -> list[str] | None:
        """The IPv6 chain for an IPv4 one; None on a host that is not dual-stack. An app that opted out has an
        empty one, so rules it had before are gone. `extra6`: the IPv6 twins of addresses that are not instances
        (a forward's old host, plan/forwarding.Target.twins6)."""
        if self.backend6 is None:
            return None
        if not self.dual(app):
            return []
        # A chain with no DNAT to an instance (a host-bound app's, maintenance's redirects alone, a forward to
        # another host) needs no twins from Docker: it is not asked.
        destinations = rules.dnat_destinations(wanted) - set(extra6 or {})
        twins = self.twins(destinations, fresh=True) if destinations else {}
        return rules.for_ipv6(wanted, {**twins, **(extra6 or {})})

    def chain6(self, app: str) -> list[str] | None:
        """The app's IPv6 chain as it is now; None when it does not exist or the host is not dual-stack."""
        return None if self.backend6 is None else self.backend6.list_chain(self.names.app(app))

    def drifted6(self, app: AppConfig, wanted: list[str], extra6: Mapping[str, str] | None = None) -> bool:
        """Whether the IPv6 chain differs from what the IPv4 one calls for (a crash between the two commits on
        iptables, or a rule changed by hand)."""
        wanted6 = self.wanted6(app, wanted, extra6)
        return wanted6 is not None and self.chain6(app.name) != wanted6

    # --- changes -------------------------------------------------------------------------------

    def rewrite(self, render: Render, *tables: str, ipv6: bool = False) -> str | None:
        """Under the lock, read `tables`, render a transaction from them and restore it; the text, or None if
        there was nothing to change. `ipv6`: the IPv6 backend's tables (None on a host that is not dual-stack)."""
        backend = self.backend6 if ipv6 else self.backend
        if backend is None:
            return None
        with self.lock():
            text = render(*(self.table(name, ipv6=ipv6) for name in tables))
            if text:
                backend.restore(text)
        return text or None

    def rewrite6(self, render: Render, *tables: str) -> str | None:
        """`rewrite` in the IPv6 backend: None on a host that is not dual-stack, or with nothing to change."""
        return self.rewrite(render, *tables, ipv6=True)

    def teardown(self) -> bool:
        """Remove every nat chain the deployer owns, from both backends and both families (the IPv6 one also when
        IPv6 is off now, for what an earlier config left); whether there was any."""
        removed = False
        for backend in (self.backend, self.retired, self.backend6):
            if backend is not None:
                removed = self._remove_owned(backend) or removed
        return bool(self.retire_ipv6_leftovers()) or removed

    def retire_ipv6_leftovers(self) -> list[str]:
        """Remove the deployer's IPv6 rules from the IPv6 backends not in use: all of them once IPv6 is turned off
        (their DNAT would send IPv6 clients to instances that are gone after the next deploy), the other one after
        a switch of backends. Called after every app's rules are in place. What was removed."""
        return [
            f"IPv6 rules of an earlier config removed ({type(backend).__name__})"
            for backend in self.leftovers6
            if self._remove_owned(backend, may_be_missing=True)
        ]

    def _remove_owned(self, backend: NetfilterBackend, *, may_be_missing: bool = False) -> bool:
        """Every nat chain the deployer owns in one backend, removed in one transaction; whether there was any.
        `may_be_missing`: a backend whose tool is not installed holds nothing (an IPv4-only host's ip6tables)."""
        with self.lock():
            try:
                saved = backend.save_table("nat")
            except RulesError as exc:
                if may_be_missing and "not installed" in str(exc):
                    return False
                raise
            text = rules.render_teardown(rules.parse_table(saved, "nat"), self.names)
            if text:
                backend.restore(text)
        return bool(text)

    def ensure_network(self) -> None:
        """The deployer's Docker network; on a dual-stack host, the host's IPv6 forwarding made safe first.

        First, because Docker itself writes `net.ipv6.conf.all.forwarding=1` when it makes (or, at its start,
        restores) a network with IPv6: done after it, the `accept_ra=2` would come too late, and the kernel drops
        the default routes learnt from router advertisements the moment forwarding turns on."""
        if not self.forwarding6_done:
            self.ensure_forwarding6()  # outside clients' IPv6 packets are forwarded to the instances
        self.network.ensure_network(
            self.settings.network, self.settings.bridge, self.ipv6_subnet, ipv6_required=self.settings.ipv6_explicit
        )

    def prepare_bridge(self) -> None:
        """The deployer's Docker network, and loopback clients allowed through its bridge."""
        self.ensure_network()
        self.backend.enable_route_localnet(self.settings.bridge)

    def ensure_forwarding6(self) -> list[str]:
        """Turn the host's IPv6 forwarding on (accept_ra kept first) on a dual-stack host; what was changed, each
        change told to `host_changed` too. Reads the sysctls each call: a forward to another host's IPv6 address
        asks again."""
        if self.backend6 is None or self.forwarding6 is None:
            return []
        changes = self.forwarding6()
        self.forwarding6_done = True
        for change in changes:
            self.host_changed(change)
        return changes

    def ensure_base(self, app: AppConfig, *, locked: bool = False) -> None:
        """Add whatever is missing of the jumps, the POSTROUTING chain and the app's (empty) chain."""
        if not locked:
            with self.lock():
                self.ensure_base(app, locked=True)
            return
        self.prepare_bridge()
        live = self.table("nat")
        text = rules.render_restore(live, self.names, self.settings.bridge, {}, ensure_apps=[app.name])
        if text.strip() != "*nat\nCOMMIT":
            self.backend.restore(text)
        if self.backend6 is not None:
            text6 = self._base_text6(app)
            if text6 is not None:
                self.backend6.restore(text6)

    def flip(
        self,
        app: AppConfig,
        wanted: list[str],
        detail: dict[str, Any] | None = None,
        *,
        tidy: bool = True,
        extra6: Mapping[str, str] | None = None,
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

        On a dual-stack host the IPv6 chain makes the same move in the same step (see the module's docstring);
        `extra6` as for wanted6.
        """
        chain = self.names.app(app.name)
        wanted6 = self.wanted6(app, wanted, extra6)
        with self.lock():
            families = [(self.backend, wanted)]
            if wanted6 is not None and self.backend6 is not None:
                families.append((self.backend6, wanted6))
            befores = []
            for backend, _ in families:
                before = backend.list_chain(chain)
                if before is None:
                    self.ensure_base(app, locked=True)
                    before = []
                befores.append(before)
            moves, left, untidied = [], [], []
            for (backend, want), before in zip(families, befores, strict=True):
                if before == want:
                    continue
                if before[: len(want)] == want:  # an earlier flip's move, untidied: only the tidy is left
                    untidied.append((backend, want, before))
                    continue
                # Add-only when there are rules to shadow: new flows move at the commit; the tidy comes after.
                moves.append((backend, rules.render_takeover(self.names, app.name, want, before)))
                if before:
                    left.append((backend, want, before))
            if untidied:
                self.shadowed.pop(app.name, None)
            for backend, want, before in untidied:
                self.rewrite_chain(app, want, before, backend)
            if moves:
                started = self.clock()
                self.commit(moves)
                if detail is not None:
                    detail["committed_ms"] = round((self.clock() - started) * 1000, 2)
                    detail["committed_at"] = utc_now()
            if tidy:
                for backend, want, before in left:
                    self.rewrite_chain(app, want, before, backend)
            elif left:
                self.shadowed[app.name] = [(backend, want) for backend, want, _ in left]
        return rules.dnat_destinations(befores[0]) - rules.dnat_destinations(wanted)

    def commit(self, moves: list[tuple[NetfilterBackend, str]]) -> None:
        """One transaction per family, or one for both where the backend can (nftables' `restore_pair`). On
        iptables the IPv6 move commits first: a crash before the IPv4 one leaves both families serving, the
        IPv4 one on the old instance, until reconcile."""
        if len(moves) == 2 and hasattr(self.backend, "restore_pair"):
            (first, text), (other, other_text) = moves
            first.restore_pair(text, other, other_text)  # type: ignore[attr-defined]
            return
        for backend, text in reversed(moves):
            backend.restore(text)

    def rewrite_chain(
        self, app: AppConfig, wanted: list[str], before: list[str], backend: NetfilterBackend | None = None
    ) -> None:
        """The app's chain rewritten to `wanted`; `before` put back if that is refused. Under the lock."""
        backend = backend or self.backend
        try:
            backend.restore(rules.render_chain(self.names, app.name, wanted))
        except RulesError as exc:
            backend.restore(rules.render_chain(self.names, app.name, before))
            raise RulesError(f"{exc}; the previous rules were restored", app=app.name) from None

    def tidy(self, app: AppConfig) -> bool:
        """Drop the rules that a `flip(tidy=False)` left shadowed; whether there were any.

        The caller still holds the app's lock, so the chain is what that flip made: no read is needed. A
        refusal leaves the wanted rules in front, still serving, and the shadowed ones to reconcile.
        """
        shadowed = self.shadowed.pop(app.name, None)
        if shadowed is None:
            return False
        with self.lock():
            for backend, wanted in shadowed:
                backend.restore(rules.render_chain(self.names, app.name, wanted))
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

    def both_families(self, filters: list[list[str]], extra6: Mapping[str, str] | None = None) -> list[list[str]]:
        """The filters, and on a dual-stack host their IPv6 twins (plan/conntrack.for_ipv6); `extra6` as for
        wanted6."""
        if self.backend6 is None:
            return filters
        addresses = {f[f.index("--reply-src") + 1] for f in filters if "--reply-src" in f} - set(extra6 or {})
        return filters + conntrack.for_ipv6(filters, {**self.twins(addresses), **(extra6 or {})})

    def clean_flows(
        self, filters: list[list[str]], extra6: Mapping[str, str] | None = None, *, as_given: bool = False
    ) -> int:
        """Delete the conntrack entries matching each filter; how many went. `as_given`: the filters name their
        family themselves (`-f ipv6`), and get no twins."""
        return sum(
            self.backend.conntrack_delete(f) for f in (filters if as_given else self.both_families(filters, extra6))
        )

    def flows(self, filters: list[list[str]]) -> list[str]:
        """The conntrack entries matching each filter, as `conntrack -L` prints them."""
        return [line for f in self.both_families(filters) for line in self.backend.conntrack_list(f)]

    def count_flows(self, filters: list[list[str]], extra6: Mapping[str, str] | None = None) -> int:
        return sum(len(self.backend.conntrack_list(f)) for f in self.both_families(filters, extra6))

    def wait_for_old_flows(
        self, filters: list[list[str]], seconds: float, extra6: Mapping[str, str] | None = None
    ) -> int:
        """Wait up to `seconds` for the flows matching `filters` to end, returning early once none is left.

        What a retired instance, a forward or a return path is given to finish its open connections; returns
        how many were still open.
        """
        deadline = self.clock() + seconds
        while True:
            remaining = self.count_flows(filters, extra6)
            if remaining == 0 or self.clock() >= deadline:
                return remaining
            self.sleep(min(0.25, max(0.0, deadline - self.clock())))

    def conntrack_timeout(self, name: str, default: int) -> int:
        timeout = self.backend.conntrack_timeout(name)
        return default if timeout is None else timeout
