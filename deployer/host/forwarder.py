"""Orders the effects of `forward`, `forward --off` and `forward-return`, as engine.py does for a deploy.

The order is what keeps traffic flowing:
- preflight first, over facts the routing adapter gathered: a refused command changes nothing;
- the accept (and masquerade) rules before the DNAT flip, so the first forwarded packet passes
  FORWARD; the record right after the flip, so it says what is live;
- leaving forward mode (`--off`, or a deploy that replaces it) flips first, then lets the
  forwarded TCP connections finish (up to the app's drain_seconds) before their accept rules go;
- on the old host, the return route and `ip rule` exist before the first connection is marked,
  and at `--off` marking stops first while replies of open connections still find their way.

The app chain is flipped by the same one-transaction flip as a deploy's (`Chains.flip`). On a dual-stack
host a forward that names the old host's IPv6 address moves the IPv6 chain in the same flip, and its accept
and masquerade rules are written in both families, IPv6 first; a forward without one leaves the app's IPv6
chain empty (its IPv6 clients refused) and removes any IPv6 rules of an earlier forward.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from deployer.config import AppConfig, Config
from deployer.errors import DeployerError, InvalidForwarding, PreflightFailed, StateError
from deployer.folders import write_atomically
from deployer.host.locks import HostLock
from deployer.host.netfilter.chains import Chains
from deployer.host.operation import Operation
from deployer.host.state import StateStore
from deployer.journal import Journal, utc_now
from deployer.plan import conntrack, forwarding
from deployer.plan.forwarding import MODE, ReturnPath, Target
from deployer.plan.records import SERVING, AppState
from deployer.plan.rules import SavedTable

RETURN_RECORD = "forward-return.json"


def _to6(target: Target) -> dict[str, str]:
    """The audit log's `to6`, when the forward names an IPv6 address."""
    return {"to6": target.address6} if target.address6 else {}


class RoutingPort(Protocol):
    """Routes, links, neighbours, `ip rule`s and the sysctls forwarding depends on (adapters/routing.py)."""

    def route_get(self, address: str) -> forwarding.Route: ...
    def link(self, name: str) -> forwarding.Link: ...
    def rules(self, ipv6: bool = False) -> list[dict[str, Any]]: ...
    def table_routes(self, table: int, ipv6: bool = False) -> list[dict[str, Any]]: ...
    def probe_peer(self, address: str, dev: str | None, timeout: float = 1.0) -> forwarding.Peer: ...
    def tcp_open(self, address: str, port: int, timeout: float = 2.0) -> str | None: ...
    def sysctl(self, key: str) -> str | None: ...
    def sysctl_writable(self, key: str) -> bool: ...
    def set_sysctl(self, key: str, value: str) -> None: ...
    def run(self, command: list[str]) -> None: ...


class ForwardHost(Protocol):
    """The parts of a host forwarding uses (the engine is one)."""

    config: Config
    store: StateStore
    chains: Chains
    journal: Journal
    clock: Callable[[], float]


class Forwarder:
    def __init__(self, host: ForwardHost, routing: RoutingPort) -> None:
        self.config = host.config
        self.chains = host.chains
        self.names = host.chains.names
        self.journal = host.journal
        self.store = host.store
        self.clock = host.clock
        self.routing = routing

    def _operation(self, kind: str, base: Mapping[str, Any], lock: AbstractContextManager[Any]) -> Operation:
        return Operation(self.journal, kind, base, lock=lock, clock=self.clock)

    # --- forward (the new host) ------------------------------------------------------------------

    def forward(
        self,
        app_name: str,
        addresses: str | Sequence[str],
        *,
        masquerade: bool = False,
        ports: tuple[str, ...] = (),
        actor: str,
    ) -> Target:
        """DNAT the app's external ports to `addresses` (the old host's IPv4 address, and its IPv6 one on a
        dual-stack host), ensuring forwarding and its accept rules first."""
        app = self.config.app(app_name)
        target = forwarding.plan_target(
            app, addresses, masquerade=masquerade, port_specs=ports, ipv6=self.chains.backend6 is not None
        )
        base = {"app": app.name, "actor": actor}
        with self._operation("forward", base, self.chains.app_lock(app.name, tag="forward", actor=actor)) as op:
            op.failed["to"] = target.address
            op.start(to=target.address, masquerade=target.masquerade, **_to6(target))
            state = self.store.load(app.name)
            with op.step("preflight") as step:
                facts = self.forward_facts(target)
                step.detail.update(
                    route=f"{facts.route.dev or '-'} via {facts.route.gateway or 'link'}",
                    ip_forward=facts.ip_forward,
                    echo=facts.peer.echo,
                )
                problems = forwarding.check_forward(app.name, target, facts, state.mode, state.mode_detail)
                if problems:
                    raise PreflightFailed(
                        f"not forwarding {app.name} to {target.address}; nothing was changed:", problems, app=app.name
                    )
            if not facts.ip_forward:
                with op.step("ip-forward"):
                    self.routing.set_sysctl("net/ipv4/ip_forward", "1")
            if target.address6:
                with op.step("ipv6-forwarding") as step:
                    step.detail["changed"] = self.chains.ensure_forwarding6()
            before = Target.from_detail(state.mode_detail) if state.mode == MODE else None
            with op.step("forward-rules") as step:
                step.detail["changed"] = self._apply_extras(app.name, target)
            try:
                with op.step("flip") as step:
                    moved = self.chains.flip(
                        app, forwarding.app_rules(self.names, app.name, target), step.detail, extra6=target.twins6
                    )
                    step.detail["to"] = f"forward {target.address}" + (
                        f" [{target.address6}]" if target.address6 else ""
                    )
            except DeployerError:
                with contextlib.suppress(DeployerError):
                    self._apply_extras(app.name, before)
                raise
            with op.step("record"):
                current = self.store.load(app.name)
                self.store.save(
                    replace(
                        current,
                        mode=MODE,
                        updated_at=utc_now(),
                        mode_detail=target.detail(
                            since=current.mode_detail.get("since", utc_now()) if current.mode == MODE else utc_now(),
                            dev=facts.route.dev,
                        ),
                    )
                )
            with contextlib.suppress(DeployerError), op.step("conntrack") as step:
                step.detail["deleted"] = self.chains.clean_flows(conntrack.after_flip(app, moved))
            op.finish(to=target.address, masquerade=target.masquerade, **_to6(target))
        return target

    def forward_off(self, app_name: str, *, actor: str) -> list[str]:
        """Flip the app back to its local instance (or to nothing), then retire the forward. Returns what changed."""
        app = self.config.app(app_name)
        base = {"app": app.name, "actor": actor}
        with self._operation("forward-off", base, self.chains.app_lock(app.name, tag="forward-off", actor=actor)) as op:
            state = self.store.load(app.name)
            if state.mode != MODE:
                leftovers = self._apply_extras(app.name, None)
                if leftovers:
                    op.finish(removed="leftover accept rules")
                    return [f"leftover accept and masquerade rules of {app.name}"]
                return []
            op.start(to=state.mode_detail.get("to"), **_to6(Target.from_detail(state.mode_detail)))
            wanted = self.chains.wanted(app, replace(state, mode=SERVING, mode_detail={}))
            with op.step("flip") as step:
                moved = self.chains.flip(app, wanted, step.detail)
                step.detail["to"] = (
                    f"{state.active.port_set} {state.active.address}" if state.active else "nothing (no local instance)"
                )
            with op.step("record"):
                self.store.save(replace(self.store.load(app.name), mode=SERVING, mode_detail={}, updated_at=utc_now()))
            with contextlib.suppress(DeployerError), op.step("conntrack") as step:
                twins6 = Target.from_detail(state.mode_detail).twins6
                step.detail["deleted"] = self.chains.clean_flows(conntrack.after_flip(app, moved), twins6)
            changes = [f"{app.name} no longer forwards to {forwarding.describe_to(state.mode_detail)}"]
            changes += self.leave(app, state.mode_detail, base)
        return changes

    def leave(self, app: AppConfig, detail: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
        """After the flip away from a forward: drain its TCP connections, then drop its accept rules and flows."""
        target = Target.from_detail(detail)
        with self.journal.step("drain-forward", **base) as step:
            step.detail["remaining"] = self.chains.wait_for_old_flows(
                conntrack.established_tcp(app, target.address), app.drain_seconds, target.twins6
            )
        with self.journal.step("forward-rules", **base) as step:
            step.detail["changed"] = self._apply_extras(app.name, None)
        with contextlib.suppress(DeployerError):
            self.chains.clean_flows(conntrack.after_stop(app, target.address), target.twins6)
        return [
            f"accept{' and masquerade' if target.masquerade else ''} rules for {forwarding.describe_to(detail)} removed"
        ]

    def reconcile(self, app: AppConfig, state: AppState, live: SavedTable) -> list[str]:
        """Forward mode: the app chain, the accept rules and forwarding as the record says; instances untouched."""
        target = Target.from_detail(state.mode_detail)
        repairs = []
        if self.routing.sysctl("net/ipv4/ip_forward") != "1":
            self.routing.set_sysctl("net/ipv4/ip_forward", "1")
            repairs.append("IPv4 forwarding switched on again")
        if target.address6:
            repairs += [f"IPv6 forwarding: {change}" for change in self.chains.ensure_forwarding6()]
        if self._apply_extras(app.name, target):
            repairs.append(
                f"accept rules of {app.name}'s forward to {forwarding.describe_to(state.mode_detail)} restored"
            )
        wanted = forwarding.app_rules(self.names, app.name, target)
        if self.chains.base_missing(live, app):
            self.chains.ensure_base(app)
            repairs.append(f"jumps and chains of {app.name} restored")
        if live.rules(self.names.app(app.name)) != wanted:
            moved = self.chains.flip(app, wanted, extra6=target.twins6)
            self.chains.clean_flows(conntrack.after_flip(app, moved))
            repairs.append(f"rules of {app.name} forwarded to {target.address} again")
        elif self.chains.drifted6(app, wanted, target.twins6):
            self.chains.flip(app, wanted, extra6=target.twins6)
            where = f"[{target.address6}]" if target.address6 else "nowhere (no IPv6 address in the forward)"
            repairs.append(f"IPv6 rules of {app.name} forwarded to {where} again")
        return repairs

    def drift(self, app: str, state: AppState, nat: SavedTable) -> list[str]:
        """What `status` finds wrong with a forward beyond the app chain: its filter and nat rules, forwarding."""
        target = Target.from_detail(state.mode_detail)
        problems = []
        which = "accept and masquerade rules" if target.masquerade else "accept rules"
        if forwarding.render_extras(self.chains.table("filter"), nat, self.names, app, target) is not None:
            problems.append(f"the forward's {which} are missing or changed")
        if self._extras6_differ(app, target):
            problems.append(f"the forward's IPv6 {which} are missing or changed")
        if self.routing.sysctl("net/ipv4/ip_forward") != "1":
            problems.append("IPv4 forwarding is off")
        if target.address6 and self.routing.sysctl("net/ipv6/conf/all/forwarding") != "1":
            problems.append("IPv6 forwarding is off")
        return problems

    def _extras6_differ(self, app: str, target: Target) -> bool:
        """Whether ip6tables' accept and masquerade rules differ from what the forward calls for (read only)."""
        if self.chains.backend6 is None:
            return False
        tables = [self.chains.table(name, ipv6=True) for name in ("filter", "nat")]
        return forwarding.render_extras(*tables, self.names, app, target, ipv6=True) is not None

    def forward_facts(self, target: Target) -> forwarding.ForwardFacts:
        four = self._reach(target, target.address)
        return forwarding.ForwardFacts(
            ip_forward=self.routing.sysctl("net/ipv4/ip_forward") == "1",
            ip_forward_writable=self.routing.sysctl_writable("net/ipv4/ip_forward"),
            route=four.route,
            peer=four.peer,
            ports=four.ports,
            ipv6=self._reach(target, target.address6) if target.address6 else None,
        )

    def _reach(self, target: Target, address: str) -> forwarding.FamilyFacts:
        """The route to one address of the old host, one echo, and each TCP port it should accept."""
        route = self.routing.route_get(address)
        if route.kind != "unicast":
            return forwarding.FamilyFacts(route, forwarding.Peer(False))
        return forwarding.FamilyFacts(
            route,
            self.routing.probe_peer(address, None if route.gateway else route.dev),
            {p.to_port: self.routing.tcp_open(address, p.to_port) for p in target.ports if p.protocol == "tcp"},
        )

    def _apply_extras(self, app: str, target: Target | None) -> bool:
        """Make the app's accept and masquerade rules those of `target` (None: none), in both families on a
        dual-stack host, IPv6 first as a flip commits. True if anything changed."""
        changed = False
        for ipv6 in (True, False):
            changed = (
                self.chains.rewrite(
                    lambda filter_table, nat, ipv6=ipv6: forwarding.render_extras(
                        filter_table, nat, self.names, app, target, ipv6=ipv6
                    ),
                    "filter",
                    "nat",
                    ipv6=ipv6,
                )
                is not None
                or changed
            )
        return changed

    # --- forward-return (the old host) ------------------------------------------------------------

    def forward_return(
        self,
        via: str | Sequence[str],
        dev: str,
        *,
        mark: int = forwarding.DEFAULT_MARK,
        table: int = forwarding.DEFAULT_TABLE,
        priority: int = forwarding.DEFAULT_PRIORITY,
        actor: str,
    ) -> ReturnPath:
        """Mark connections that arrive from the new host and route their replies back through it; both
        families' when `via` names its IPv6 address on the link too (a dual-stack host only)."""
        via4, via6 = forwarding.return_addresses([via] if isinstance(via, str) else list(via))
        forwarding.check_return_arguments(via4, dev, mark, table, priority)
        if via6 is not None and self.chains.backend6 is None:
            raise InvalidForwarding(
                f"--via {via6}: IPv6 is off on this host ([deployer] ipv6), so it has no ip6tables rules to mark "
                "IPv6 connections with"
            )
        base = {"actor": actor}
        with self._operation("forward-return", base, self._return_lock()) as op:
            op.start(via=via4, dev=dev, **({"via6": via6} if via6 else {}))
            with op.step("preflight") as step:
                recorded = self.load_return()
                facts = self.return_facts(via4, dev, table, recorded, via6)
                path = ReturnPath(via4, dev, facts.peer.lladdr if facts.link.arp else None, mark, table, priority, via6)
                step.detail.update(lladdr=path.lladdr, rp_filter=facts.rp_filter_dev, echo=facts.peer.echo)
                problems = forwarding.check_return(path, facts)
                if problems:
                    where = f"{via4} and {via6}" if via6 else via4
                    raise PreflightFailed(f"not routing replies via {where} on {dev}; nothing was changed:", problems)
            with op.step("return-route") as step:
                commands = forwarding.route_commands(path, facts.rules) + forwarding.route_commands(
                    path, facts.ipv6.rules if facts.ipv6 else [], ipv6=True
                )
                step.detail["commands"] = [" ".join(c) for c in commands]
                try:
                    for command in commands:
                        self.routing.run(command)
                    for ipv6 in (True, False):
                        self.chains.rewrite(
                            lambda mangle, ipv6=ipv6: forwarding.render_return(mangle, self.names, path, ipv6=ipv6),
                            "mangle",
                            ipv6=ipv6,
                        )
                except DeployerError:
                    if not recorded:
                        with contextlib.suppress(DeployerError):
                            self._remove_return(path)
                    raise
            self._save_return(path.record(since=(recorded or {}).get("since", utc_now())))
            with contextlib.suppress(DeployerError), op.step("conntrack") as step:
                # Each filter names an address of its own family: no IPv6 twin of an IPv4 one, which conntrack
                # refuses ("mismatched address family").
                filters = forwarding.unmarked_flows(path, facts.link.addresses)
                if via6:
                    filters += forwarding.unmarked_flows(path, facts.link.addresses6, ipv6=True)
                step.detail["deleted"] = self.chains.clean_flows(filters, as_given=True)
            op.finish(via=via4, dev=dev, lladdr=path.lladdr, mark=f"{mark:#x}", table=table)
        return path

    def forward_return_off(
        self,
        *,
        drain: float = 10.0,
        mark: int = forwarding.DEFAULT_MARK,
        table: int = forwarding.DEFAULT_TABLE,
        priority: int = forwarding.DEFAULT_PRIORITY,
        actor: str,
    ) -> list[str]:
        """Stop marking, let marked connections finish (up to `drain` seconds), then remove everything."""
        base = {"actor": actor}
        with self._operation("forward-return-off", base, self._return_lock()) as op:
            recorded = self.load_return()
            path = ReturnPath.from_record(recorded) if recorded else ReturnPath("", "", None, mark, table, priority)
            op.start(via=path.via or None)
            with op.step("drain-return") as step:
                for ipv6 in (True, False):  # the IPv6 chains only on a dual-stack host (rewrite: None otherwise)
                    self.chains.rewrite(
                        lambda mangle, ipv6=ipv6: (
                            forwarding.render_return(mangle, self.names, path, mark_new=False, ipv6=ipv6)
                            if mangle.has_chain(forwarding.return_chain(self.names))
                            else None
                        ),
                        "mangle",
                        ipv6=ipv6,
                    )
                # On a dual-stack host the filter gets its IPv6 twin (Chains.both_families): IPv6 flows drain too.
                marked = [["-p", "tcp", "--mark", path.fwmark, "--state", "ESTABLISHED"]]
                step.detail["remaining"] = self.chains.wait_for_old_flows(marked, drain)
            with op.step("return-route") as step:
                removed = self._remove_return(path)
                step.detail["removed"] = removed
            self.forget_return()
            op.finish(removed=removed)
        return removed

    def return_facts(
        self, via: str, dev: str, table: int, recorded: Mapping[str, Any] | None, via6: str | None = None
    ) -> forwarding.ReturnFacts:
        link = self.routing.link(dev)
        route, peer = self._neighbour(link, via, dev)
        rp_dev = self.routing.sysctl(f"net/ipv4/conf/{dev}/rp_filter") if link.exists else None
        ipv6 = None
        if via6 is not None:
            route6, peer6 = self._neighbour(link, via6, dev)
            ipv6 = forwarding.ReturnFamily(
                route6, peer6, self.routing.rules(ipv6=True), self.routing.table_routes(table, ipv6=True)
            )
        return forwarding.ReturnFacts(
            link=link,
            route=route,
            rp_filter_all=int(self.routing.sysctl("net/ipv4/conf/all/rp_filter") or 0),
            rp_filter_dev=int(rp_dev) if rp_dev is not None else None,
            peer=peer,
            rules=self.routing.rules(),
            table_routes=self.routing.table_routes(table),
            recorded=recorded,
            ipv6=ipv6,
        )

    def _neighbour(self, link: forwarding.Link, via: str, dev: str) -> tuple[forwarding.Route, forwarding.Peer]:
        """The route to the new host's address, and, when it is on `dev`'s link, its answer and MAC address."""
        route = self.routing.route_get(via)
        on_link = link.exists and route.kind == "unicast" and route.dev == dev and not route.gateway
        return route, self.routing.probe_peer(via, dev) if on_link else forwarding.Peer(False)

    def _remove_return(self, path: ReturnPath) -> list[str]:
        """Both families' mangle chains, `ip rule`s and table routes (IPv6's on a dual-stack host)."""
        removed = []
        families = (False, True) if self.chains.backend6 is not None else (False,)
        for ipv6 in families:
            if self.chains.rewrite(
                lambda mangle: forwarding.render_return(mangle, self.names, None), "mangle", ipv6=ipv6
            ):
                removed.append("IPv6 mangle chains" if ipv6 else "mangle chains")
        for ipv6 in families:
            for command in forwarding.route_removal_commands(
                path, self.routing.rules(ipv6), self.routing.table_routes(path.table, ipv6), ipv6=ipv6
            ):
                self.routing.run(command)
                what = f"ip {command[1]} rule {' '.join(command[4:])}" if ipv6 else f"ip rule {' '.join(command[4:])}"
                removed.append(
                    what if command[2] == "rule" else f"the {'IPv6 ' if ipv6 else ''}routes of table {path.table}"
                )
        return removed

    # --- the host-level record and lock -------------------------------------------------------------

    def _return_path_file(self) -> Path:
        return Path(self.chains.settings.state_dir) / RETURN_RECORD

    def load_return(self) -> dict[str, Any] | None:
        path = self._return_path_file()
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {path}: {exc}") from None

    def _save_return(self, record: Mapping[str, Any]) -> None:
        write_atomically(self._return_path_file(), json.dumps(record, indent=2, sort_keys=True) + "\n")

    def forget_return(self) -> None:
        self._return_path_file().unlink(missing_ok=True)

    def _return_lock(self) -> HostLock:
        return HostLock(self.chains.lock_path("forward-return"), wait=self.chains.settings.host_lock_wait)

    # --- uninstall ------------------------------------------------------------------------------

    def uninstall(self) -> list[str]:
        """Everything forwarding left on this host: accept and masquerade chains, the return path."""
        removed = []
        if [
            ipv6
            for ipv6 in (True, False)
            if self.chains.rewrite(
                lambda filter_table, nat: forwarding.render_extras_teardown(filter_table, nat, self.names),
                "filter",
                "nat",
                ipv6=ipv6,
            )
        ]:
            removed.append(
                f"forwarding chains {forwarding.forward_chain(self.names)} and {forwarding.snat_chain(self.names)}"
            )
        recorded = self.load_return()
        if recorded:
            removed += [f"return path: {item}" for item in self._remove_return(ReturnPath.from_record(recorded))]
            self.forget_return()
        else:
            removed += [
                f"return path: {'IPv6 ' if ipv6 else ''}mangle chains"
                for ipv6 in (False, True)
                if self.chains.rewrite(
                    lambda mangle: forwarding.render_return(mangle, self.names, None), "mangle", ipv6=ipv6
                )
            ]
        return removed
