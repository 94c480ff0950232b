"""Orders the effects of `forward`, `forward --off` and `forward-return`, as engine.py does for a deploy.

The order is what keeps traffic flowing:
- preflight first, over facts the routing adapter gathered: a refused command changes nothing;
- the accept (and masquerade) rules before the DNAT flip, so the first forwarded packet passes
  FORWARD; the record right after the flip, so it says what is live;
- leaving forward mode (`--off`, or a deploy that replaces it) flips first, then lets the
  forwarded TCP connections finish (up to the app's drain_seconds) before their accept rules go;
- on the old host, the return route and `ip rule` exist before the first connection is marked,
  and at `--off` marking stops first while replies of open connections still find their way.

The app chain is flipped by the engine's own one-transaction flip.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from deployer.config import AppConfig
from deployer.errors import DeployerError, PreflightFailed, StateError
from deployer.host.state import write_atomically
from deployer.journal import utc_now
from deployer.plan import conntrack, forwarding, rules
from deployer.plan.forwarding import MODE, ReturnPath, Target
from deployer.plan.records import AppState

if TYPE_CHECKING:
    from deployer.adapters.routing import Routing
    from deployer.host.engine import Engine

RETURN_RECORD = "forward-return.json"


class Forwarder:
    def __init__(self, engine: "Engine", routing: "Routing | None" = None) -> None:
        if routing is None:
            from deployer.adapters.routing import Routing

            routing = Routing()
        self.engine = engine
        self.routing = routing
        self.names = engine.names
        self.journal = engine.journal
        self.netfilter = engine.netfilter
        self.store = engine.store

    # --- forward (the new host) ------------------------------------------------------------------

    def forward(self, app_name: str, address: str, *, masquerade: bool = False, ports: tuple[str, ...] = (),
                actor: str) -> Target:
        """DNAT the app's external ports to `address`, ensuring forwarding and its accept rules first."""
        app = self.engine.config.app(app_name)
        target = forwarding.plan_target(app, address, masquerade=masquerade, port_specs=ports)
        base = {"app": app.name, "actor": actor}
        with self.engine._app_lock(app, tag="forward", actor=actor):
            self.journal.record("forward.started", to=target.address, masquerade=target.masquerade, **base)
            try:
                state = self.store.load(app.name)
                with self.journal.step("preflight", **base) as step:
                    facts = self.forward_facts(target)
                    step.detail.update(route=f"{facts.route.dev or '-'} via {facts.route.gateway or 'link'}",
                                       ip_forward=facts.ip_forward, echo=facts.peer.echo)
                    problems = forwarding.check_forward(app.name, target, facts, state.mode, state.mode_detail)
                    if problems:
                        raise PreflightFailed(f"not forwarding {app.name} to {target.address}; nothing was changed:",
                                              problems, app=app.name)
                if not facts.ip_forward:
                    with self.journal.step("ip-forward", **base):
                        self.routing.set_sysctl("net/ipv4/ip_forward", "1")
                before = Target.from_detail(state.mode_detail) if state.mode == MODE else None
                with self.journal.step("forward-rules", **base) as step:
                    step.detail["changed"] = self._apply_extras(app.name, target)
                try:
                    with self.journal.step("flip", **base) as step:
                        moved = self.engine._flip(app, forwarding.app_rules(self.names, app.name, target), step.detail)
                        step.detail["to"] = f"forward {target.address}"
                except DeployerError:
                    with contextlib.suppress(DeployerError):
                        self._apply_extras(app.name, before)
                    raise
                with self.journal.step("record", **base):
                    current = self.store.load(app.name)
                    self.store.save(replace(current, mode=MODE, updated_at=utc_now(), mode_detail=target.detail(
                        since=current.mode_detail.get("since", utc_now()) if current.mode == MODE else utc_now(),
                        dev=facts.route.dev)))
                with contextlib.suppress(DeployerError), self.journal.step("conntrack", **base) as step:
                    step.detail["deleted"] = self.engine._clean_flows(conntrack.after_flip(app, moved))
            except DeployerError as exc:
                self.journal.record("forward.failed", outcome="failed", to=target.address, error=str(exc),
                                    error_type=type(exc).__name__, **base)
                raise
            self.journal.record("forward.finished", outcome="ok", to=target.address, masquerade=target.masquerade,
                                **base)
        return target

    def forward_off(self, app_name: str, *, actor: str) -> list[str]:
        """Flip the app back to its local instance (or to nothing), then retire the forward. Returns what changed."""
        app = self.engine.config.app(app_name)
        base = {"app": app.name, "actor": actor}
        with self.engine._app_lock(app, tag="forward-off", actor=actor):
            state = self.store.load(app.name)
            if state.mode != MODE:
                leftovers = self._apply_extras(app.name, None)
                if leftovers:
                    self.journal.record("forward-off.finished", outcome="ok", removed="leftover accept rules", **base)
                    return [f"leftover accept and masquerade rules of {app.name}"]
                return []
            self.journal.record("forward-off.started", to=state.mode_detail.get("to"), **base)
            try:
                serving = replace(state, mode="serving", mode_detail={})
                wanted = self.engine._wanted_rules(app, serving)
                with self.journal.step("flip", **base) as step:
                    moved = self.engine._flip(app, wanted, step.detail)
                    step.detail["to"] = (f"{state.active.port_set} {state.active.address}" if state.active
                                         else "nothing (no local instance)")
                with self.journal.step("record", **base):
                    self.store.save(replace(self.store.load(app.name), mode="serving", mode_detail={},
                                            updated_at=utc_now()))
                with contextlib.suppress(DeployerError), self.journal.step("conntrack", **base) as step:
                    step.detail["deleted"] = self.engine._clean_flows(conntrack.after_flip(app, moved))
                changes = [f"{app.name} no longer forwards to {state.mode_detail.get('to')}"]
                changes += self.leave(app, state.mode_detail, base)
            except DeployerError as exc:
                self.journal.record("forward-off.failed", outcome="failed", error=str(exc),
                                    error_type=type(exc).__name__, **base)
                raise
            self.journal.record("forward-off.finished", outcome="ok", **base)
        return changes

    def leave(self, app: AppConfig, detail: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
        """After the flip away from a forward: drain its TCP connections, then drop its accept rules and flows."""
        target = Target.from_detail(detail)
        with self.journal.step("drain-forward", **base) as step:
            step.detail["remaining"] = self.engine._drain(app, target.address)
        with self.journal.step("forward-rules", **base) as step:
            step.detail["changed"] = self._apply_extras(app.name, None)
        with contextlib.suppress(DeployerError):
            self.engine._clean_flows(conntrack.after_stop(app, target.address))
        return [f"accept{' and masquerade' if target.masquerade else ''} rules for {target.address} removed"]

    def reconcile(self, app: AppConfig, state: AppState, live: Any) -> list[str]:
        """Forward mode: the app chain, the accept rules and forwarding as the record says; instances untouched."""
        target = Target.from_detail(state.mode_detail)
        repairs = []
        if self.routing.sysctl("net/ipv4/ip_forward") != "1":
            self.routing.set_sysctl("net/ipv4/ip_forward", "1")
            repairs.append("IPv4 forwarding switched on again")
        if self._apply_extras(app.name, target):
            repairs.append(f"accept rules of {app.name}'s forward to {target.address} restored")
        wanted = forwarding.app_rules(self.names, app.name, target)
        if self.engine._base_missing(live, app):
            self.engine._ensure_base(app)
            repairs.append(f"jumps and chains of {app.name} restored")
        if live.rules(self.names.app(app.name)) != wanted:
            moved = self.engine._flip(app, wanted)
            self.engine._clean_flows(conntrack.after_flip(app, moved))
            repairs.append(f"rules of {app.name} forwarded to {target.address} again")
        return repairs

    def drift(self, app: str, state: AppState, nat: Any) -> list[str]:
        """What `status` finds wrong with a forward beyond the app chain: its filter and nat rules, forwarding."""
        target = Target.from_detail(state.mode_detail)
        problems = []
        if forwarding.render_extras(self._table("filter"), nat, self.names, app, target) is not None:
            which = "accept and masquerade rules" if target.masquerade else "accept rules"
            problems.append(f"the forward's {which} are missing or changed")
        if self.routing.sysctl("net/ipv4/ip_forward") != "1":
            problems.append("IPv4 forwarding is off")
        return problems

    def forward_facts(self, target: Target) -> forwarding.ForwardFacts:
        route = self.routing.route_get(target.address)
        unicast = route.kind == "unicast"
        peer = (self.routing.probe_peer(target.address, None if route.gateway else route.dev) if unicast
                else forwarding.Peer(False))
        ports = {p.to_port: self.routing.tcp_open(target.address, p.to_port)
                 for p in target.ports if p.protocol == "tcp"} if unicast else {}
        return forwarding.ForwardFacts(
            ip_forward=self.routing.sysctl("net/ipv4/ip_forward") == "1",
            ip_forward_writable=self.routing.sysctl_writable("net/ipv4/ip_forward"),
            route=route, peer=peer, ports=ports)

    def _apply_extras(self, app: str, target: Target | None) -> bool:
        """Make the app's accept and masquerade rules those of `target` (None: none). True if anything changed."""
        with self.engine._netfilter_lock():
            text = forwarding.render_extras(self._table("filter"), self._table("nat"), self.names, app, target)
            if text:
                self.netfilter.restore(text)
        return text is not None

    # --- forward-return (the old host) ------------------------------------------------------------

    def forward_return(self, via: str, dev: str, *, mark: int = forwarding.DEFAULT_MARK,
                       table: int = forwarding.DEFAULT_TABLE, priority: int = forwarding.DEFAULT_PRIORITY,
                       actor: str) -> ReturnPath:
        """Mark connections that arrive from the new host and route their replies back through it."""
        forwarding.check_return_arguments(via, dev, mark, table, priority)
        base = {"actor": actor}
        with self._return_lock():
            self.journal.record("forward-return.started", via=via, dev=dev, **base)
            try:
                with self.journal.step("preflight", **base) as step:
                    recorded = self.load_return()
                    facts = self.return_facts(via, dev, table, recorded)
                    path = ReturnPath(via, dev, facts.peer.lladdr if facts.link.arp else None, mark, table, priority)
                    step.detail.update(lladdr=path.lladdr, rp_filter=facts.rp_filter_dev, echo=facts.peer.echo)
                    problems = forwarding.check_return(path, facts)
                    if problems:
                        raise PreflightFailed(f"not routing replies via {via} on {dev}; nothing was changed:",
                                              problems)
                with self.journal.step("return-route", **base) as step:
                    commands = forwarding.route_commands(path, facts.rules)
                    step.detail["commands"] = [" ".join(c) for c in commands]
                    try:
                        for command in commands:
                            self.routing.run(command)
                        with self.engine._netfilter_lock():
                            text = forwarding.render_return(self._table("mangle"), self.names, path)
                            if text:
                                self.netfilter.restore(text)
                    except DeployerError:
                        if not recorded:
                            with contextlib.suppress(DeployerError):
                                self._remove_return(path)
                        raise
                self._save_return(path.record(since=(recorded or {}).get("since", utc_now())))
                with contextlib.suppress(DeployerError), self.journal.step("conntrack", **base) as step:
                    filters = forwarding.unmarked_flows(path, facts.link.addresses)
                    step.detail["deleted"] = self.engine._clean_flows(filters)
            except DeployerError as exc:
                self.journal.record("forward-return.failed", outcome="failed", error=str(exc),
                                    error_type=type(exc).__name__, **base)
                raise
            self.journal.record("forward-return.finished", outcome="ok", via=via, dev=dev, lladdr=path.lladdr,
                                mark=f"{mark:#x}", table=table, **base)
        return path

    def forward_return_off(self, *, drain: float = 10.0, mark: int = forwarding.DEFAULT_MARK,
                           table: int = forwarding.DEFAULT_TABLE, priority: int = forwarding.DEFAULT_PRIORITY,
                           actor: str) -> list[str]:
        """Stop marking, let marked connections finish (up to `drain` seconds), then remove everything."""
        base = {"actor": actor}
        with self._return_lock():
            recorded = self.load_return()
            path = (ReturnPath.from_record(recorded) if recorded
                    else ReturnPath("", "", None, mark, table, priority))
            self.journal.record("forward-return-off.started", via=path.via or None, **base)
            try:
                with self.journal.step("drain-return", **base) as step:
                    with self.engine._netfilter_lock():
                        mangle = self._table("mangle")
                        if mangle.has_chain(forwarding.return_chain(self.names)):
                            text = forwarding.render_return(mangle, self.names, path, mark_new=False)
                            if text:
                                self.netfilter.restore(text)
                    step.detail["remaining"] = self._drain_marked(path, drain)
                with self.journal.step("return-route", **base) as step:
                    removed = self._remove_return(path)
                    step.detail["removed"] = removed
                self.forget_return()
            except DeployerError as exc:
                self.journal.record("forward-return-off.failed", outcome="failed", error=str(exc),
                                    error_type=type(exc).__name__, **base)
                raise
            self.journal.record("forward-return-off.finished", outcome="ok", removed=removed, **base)
        return removed

    def return_facts(self, via: str, dev: str, table: int,
                     recorded: Mapping[str, Any] | None) -> forwarding.ReturnFacts:
        link = self.routing.link(dev)
        route = self.routing.route_get(via)
        on_link = link.exists and route.kind == "unicast" and route.dev == dev and not route.gateway
        rp_dev = self.routing.sysctl(f"net/ipv4/conf/{dev}/rp_filter") if link.exists else None
        return forwarding.ReturnFacts(
            link=link, route=route,
            rp_filter_all=int(self.routing.sysctl("net/ipv4/conf/all/rp_filter") or 0),
            rp_filter_dev=int(rp_dev) if rp_dev is not None else None,
            peer=self.routing.probe_peer(via, dev) if on_link else forwarding.Peer(False),
            rules=self.routing.rules(), table_routes=self.routing.table_routes(table), recorded=recorded)

    def _remove_return(self, path: ReturnPath) -> list[str]:
        removed = []
        with self.engine._netfilter_lock():
            text = forwarding.render_return(self._table("mangle"), self.names, None)
            if text:
                self.netfilter.restore(text)
                removed.append("mangle chains")
        for command in forwarding.route_removal_commands(path, self.routing.rules(),
                                                         self.routing.table_routes(path.table)):
            self.routing.run(command)
            removed.append(f"ip rule {' '.join(command[4:])}" if command[2] == "rule"
                           else f"the routes of table {path.table}")
        return removed

    def _drain_marked(self, path: ReturnPath, seconds: float) -> int:
        deadline = self.engine.clock() + seconds
        while True:
            remaining = len(self.netfilter.conntrack_list(["-p", "tcp", "--mark", path.fwmark,
                                                           "--state", "ESTABLISHED"]))
            if remaining == 0 or self.engine.clock() >= deadline:
                return remaining
            self.engine.sleep(min(0.25, max(0.0, deadline - self.engine.clock())))

    def _table(self, name: str) -> Any:
        """One table as it is now (filter, nat or mangle), parsed."""
        return rules.parse_table(self.netfilter.save_table(name), name)

    # --- the host-level record and lock -------------------------------------------------------------

    def _return_path_file(self) -> Path:
        return Path(self.engine.settings.state_dir) / RETURN_RECORD

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

    @contextlib.contextmanager
    def _return_lock(self) -> Iterator[None]:
        path = Path(self.engine.settings.state_dir) / "locks" / "forward-return.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # --- uninstall ------------------------------------------------------------------------------

    def uninstall(self) -> list[str]:
        """Everything forwarding left on this host: accept and masquerade chains, the return path."""
        removed = []
        with self.engine._netfilter_lock():
            text = forwarding.render_extras_teardown(self._table("filter"), self._table("nat"), self.names)
            if text:
                self.netfilter.restore(text)
                removed.append(f"forwarding chains {forwarding.forward_chain(self.names)} and "
                               f"{forwarding.snat_chain(self.names)}")
        recorded = self.load_return()
        if recorded:
            removed += [f"return path: {item}" for item in self._remove_return(ReturnPath.from_record(recorded))]
            self.forget_return()
        elif self._table("mangle").has_chain(forwarding.return_chain(self.names)):
            with self.engine._netfilter_lock():
                text = forwarding.render_return(self._table("mangle"), self.names, None)
                if text:
                    self.netfilter.restore(text)
                    removed.append("return path: mangle chains")
        return removed

