"""Forward an app to the host it is moving away from, and route the replies back there. Pure.

While DNS changes propagate, the new host DNATs the app's external ports to the old host
(`deployer forward APP --to OLD`). Two ways to get the replies back through the new host,
which must see them to undo its DNAT:

- masquerade: the new host also rewrites the source to its own address. Works over any routed
  network; the app sees the new host as the client.
- source-preserving (the default): the old host marks connections that arrive from the new
  host (CONNMARK, recognised by the new host's MAC on the shared link, or by the tunnel device),
  copies the mark onto their replies, and routes marked packets through a table of their own
  whose default route is the new host (`deployer forward-return --via NEW --dev DEV`).

This module renders the rules and `ip` commands and decides the preflight checks from facts
the adapters gathered; `forwarder.py` orders the effects.

Chains, all owned by the deployer (PREFIX is [deployer] chain_prefix):

    nat     PREFIX-<app>          the app's chain: DNAT to the old host instead of an instance
    nat     PREFIX-SNAT           masquerade of forwarded flows   (jumped to from POSTROUTING)
    filter  PREFIX-FORWARD        accepts forwarded flows         (from DOCKER-USER, else FORWARD)
    mangle  PREFIX-RETURN         old host: mark, restore marks   (from PREROUTING)
    mangle  PREFIX-RETURN-LOCAL   old host: restore marks         (from OUTPUT)

Docker sets the FORWARD policy to DROP, so DNATed flows that leave the host again need an
accept rule. Docker keeps DOCKER-USER first in FORWARD and never flushes it, so the jump goes
there when it exists; rules appended to FORWARD would sit behind Docker's own.

On a dual-stack host a forward may name the old host's IPv6 address too (`--to OLD4 --to OLD6`):
the IPv6 app chain is the IPv4 one with OLD6 as OLD4's twin (rules.for_ipv6), and the same
accept and masquerade chains are written in ip6tables. Docker with its ip6tables option off (the
deployer's setting) leaves ip6tables alone: no DOCKER-USER, FORWARD's policy whatever the host's
firewall set, so the jump goes first in FORWARD there. The old host's return path covers IPv6 when
`forward-return` names the new host's IPv6 address too (`--via NEW4 --via NEW6`): the same mangle
chains in ip6tables, and `ip -6 rule` and `ip -6 route` in the same table.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from deployer.config import AppConfig
from deployer.errors import InvalidForwarding
from deployer.plan.records import SERVING, AppState
from deployer.plan.rules import ChainNames, Forward, SavedTable, save_string

MODE = "forward"
DEFAULT_MARK = 0x2000000
DEFAULT_TABLE = 202
DEFAULT_PRIORITY = 202
_PORT_SPEC = re.compile(r"^(\d{1,5})(?:/(tcp|udp))?=(\d{1,5})$")
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
_JUMP = re.compile(r" -j (\S+)$")
_REACHABLE_STATES = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}


# --- what is forwarded where --------------------------------------------------------------------


@dataclass(frozen=True)
class PortTarget:
    protocol: str
    external: int
    to_port: int


@dataclass(frozen=True)
class Target:
    """Where an app's external ports go while it is forwarded; kept in the record's mode_detail."""

    address: str
    masquerade: bool
    ports: tuple[PortTarget, ...]
    address6: str | None = None  # the old host's IPv6 address, on a dual-stack host; None: IPv4 clients only

    def detail(self, **extra: Any) -> dict[str, Any]:
        return {
            "to": self.address,
            **({"to6": self.address6} if self.address6 else {}),
            "masquerade": self.masquerade,
            "ports": [{"protocol": p.protocol, "external": p.external, "to_port": p.to_port} for p in self.ports],
            **extra,
        }

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> Target:
        return cls(
            address=detail["to"],
            masquerade=bool(detail.get("masquerade")),
            ports=tuple(
                PortTarget(p["protocol"], int(p["external"]), int(p["to_port"])) for p in detail.get("ports", [])
            ),
            address6=detail.get("to6"),
        )

    def address_of(self, ipv6: bool) -> str | None:
        return self.address6 if ipv6 else self.address

    @property
    def twins6(self) -> dict[str, str]:
        """The old host's IPv6 address as its IPv4 address's twin, for the IPv6 chain and conntrack filters."""
        return {self.address: self.address6} if self.address6 else {}


def plan_target(
    app: AppConfig,
    addresses: str | Sequence[str],
    *,
    masquerade: bool = False,
    port_specs: Sequence[str] = (),
    ipv6: bool = False,
) -> Target:
    """Validate `--to` (the old host's IPv4 address, and its IPv6 one on a dual-stack host: `ipv6`) and
    `--port EXTERNAL[/PROTO]=PORT`; every external port goes to the same number by default."""
    address4, address6 = _addresses(app, [addresses] if isinstance(addresses, str) else list(addresses))
    if address6 is not None:
        if not ipv6:
            raise InvalidForwarding(
                f"--to {address6}: IPv6 is off on this host ([deployer] ipv6), so it has no IPv6 clients to forward",
                app=app.name,
            )
        if not app.ipv6 or app.host_bound:
            why = "is host-bound, its IPv6 clients reach the host itself" if app.host_bound else "has ipv6 = false"
            raise InvalidForwarding(f"--to {address6}: app {app.name!r} {why}; it has no IPv6 chain", app=app.name)
    overrides: dict[tuple[int, str | None], int] = {}
    for spec in port_specs:
        match = _PORT_SPEC.fullmatch(spec)
        if not match:
            raise InvalidForwarding(
                f"--port {spec!r} must be EXTERNAL=PORT or EXTERNAL/tcp=PORT, e.g. 1000=2000", app=app.name
            )
        external, protocol, to_port = int(match.group(1)), match.group(2), int(match.group(3))
        if not 1 <= to_port <= 65535:
            raise InvalidForwarding(f"--port {spec!r}: {to_port} is not a port number", app=app.name)
        if not any(p.external == external and protocol in (None, p.protocol) for p in app.ports):
            known = ", ".join(f"{p.external}/{p.protocol}" for p in app.ports)
            raise InvalidForwarding(
                f"--port {spec!r}: app {app.name!r} has no external port "
                f"{external}{'/' + protocol if protocol else ''} (it has {known})",
                app=app.name,
            )
        overrides[(external, protocol)] = to_port
    ports = tuple(
        PortTarget(
            p.protocol,
            p.external,
            overrides.get((p.external, p.protocol), overrides.get((p.external, None), p.external)),
        )
        for p in app.ports
    )
    return Target(address4, masquerade, ports, address6)


def _addresses(app: AppConfig, given: Sequence[str]) -> tuple[str, str | None]:
    """The IPv4 address and the IPv6 one (or None) of `--to`, each checked to be another host's unicast address."""
    found: dict[int, str] = {}
    for address in given:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise InvalidForwarding(f"--to {address!r} is not an IPv4 or IPv6 address", app=app.name) from None
        if getattr(parsed, "scope_id", None):
            raise InvalidForwarding(
                f"--to {address}: an address with a zone is a link's; give the old host's global or unique "
                "local address",
                app=app.name,
            )
        if (
            parsed.is_loopback
            or parsed.is_multicast
            or parsed.is_unspecified
            or parsed.is_link_local
            or str(parsed) == "255.255.255.255"
            or (isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None)
        ):
            raise InvalidForwarding(f"--to {address} is not the unicast address of another host", app=app.name)
        if parsed.version in found:
            raise InvalidForwarding(
                f"--to {found[parsed.version]} and --to {parsed}: at most one address of each family "
                "(the old host's IPv4 address, and its IPv6 one)",
                app=app.name,
            )
        found[parsed.version] = str(parsed)
    if 4 not in found:
        raise InvalidForwarding(
            f"--to {found[6]} needs the old host's IPv4 address beside it (--to OLD4 --to OLD6): "
            "IPv4 clients would have nowhere to go"
            if 6 in found
            else "--to needs the old host's IPv4 address",
            app=app.name,
        )
    return found[4], found.get(6)


def after_promotion(state: AppState) -> AppState:
    """A deployed instance replaces a forward: from its flip on, the app serves locally again."""
    return replace(state, mode=SERVING, mode_detail={}) if state.mode == MODE else state


def status_notes(notes: Sequence[str], state: AppState, *, dual: bool = False) -> list[str]:
    """`deployer status` lines: the forward described in full instead of the bare mode name; with `dual` (the
    app's IPv6 clients are served on this host), what becomes of them."""
    if state.mode != MODE:
        return list(notes)
    refused = ipv6_refused(Target.from_detail(state.mode_detail), dual)
    return (
        [describe(state.mode_detail)]
        + ([refused] if refused else [])
        + [note for note in notes if note != f"mode: {MODE}"]
    )


def twins6(state: AppState) -> dict[str, str]:
    """A forwarded app's old host, IPv4 address to IPv6 one, when the forward names both; else nothing."""
    return Target.from_detail(state.mode_detail).twins6 if state.mode == MODE else {}


def ipv6_refused(target: Target, dual: bool) -> str | None:
    """The line that says a forward leaves the IPv6 clients of a dual-stack app refused; None when it does not."""
    if not dual or target.address6:
        return None
    return "IPv6 clients are refused while forwarded: the forward names no IPv6 address of the old host (add --to OLD6)"


def describe(detail: Mapping[str, Any]) -> str:
    """One line for `deployer status`."""
    target = Target.from_detail(detail)
    ports = ", ".join(
        f"{p.external}/{p.protocol}" + (f"->{p.to_port}" if p.to_port != p.external else "") for p in target.ports
    )
    how = "masquerading clients" if target.masquerade else "keeping client addresses"
    return f"mode: forward to {describe_to(detail)} ({ports}; {how})"


def describe_to(detail: Mapping[str, Any]) -> str:
    """Where a forward goes: the old host's IPv4 address, and its IPv6 one in brackets when it has one."""
    return f"{detail.get('to')} and [{detail['to6']}]" if detail.get("to6") else str(detail.get("to"))


# --- rules --------------------------------------------------------------------------------------


def forward_chain(names: ChainNames) -> str:
    return f"{names.prefix}-FORWARD"


def snat_chain(names: ChainNames) -> str:
    return f"{names.prefix}-SNAT"


def return_chain(names: ChainNames) -> str:
    return f"{names.prefix}-RETURN"


def return_local_chain(names: ChainNames) -> str:
    return f"{names.prefix}-RETURN-LOCAL"


def _comment(app: str, address: str) -> str:
    return f"{app} forward {address}"


def _whole(address: str) -> str:
    """One host as iptables-save prints it: /32, or /128 for IPv6."""
    return f"{address}/128" if ":" in address else f"{address}/32"


def app_rules(names: ChainNames, app: str, target: Target) -> list[str]:
    """The app chain in forward mode: each external port DNATed to the old host."""
    comment = _comment(app, target.address)
    return [
        Forward(p.protocol, p.external, target.address, p.to_port, comment).rule(names.app(app)) for p in target.ports
    ]


def accept_rules(names: ChainNames, app: str, target: Target, *, ipv6: bool = False) -> list[str]:
    """Filter FORWARD: only flows this host DNATed to the old host, both ways; `ipv6`: ip6tables' rules."""
    address = target.address_of(ipv6)
    if address is None:
        return []
    chain, comment = forward_chain(names), save_string(_comment(app, address))
    lines = []
    for p in target.ports:
        for direction, side in (("-d", "--dport"), ("-s", "--sport")):
            lines.append(
                f"-A {chain} {direction} {_whole(address)} -p {p.protocol} -m {p.protocol} {side} "
                f"{p.to_port} -m conntrack --ctstate DNAT -m comment --comment {comment} -j ACCEPT"
            )
    return lines


def masquerade_rules(names: ChainNames, app: str, target: Target, *, ipv6: bool = False) -> list[str]:
    """nat POSTROUTING: the old host answers the new host, which undoes both translations."""
    address = target.address_of(ipv6)
    if not target.masquerade or address is None:
        return []
    chain, comment = snat_chain(names), save_string(_comment(app, address))
    return [
        f"-A {chain} -d {_whole(address)} -p {p.protocol} -m {p.protocol} --dport {p.to_port} "
        f"-m conntrack --ctstate DNAT -m comment --comment {comment} -j MASQUERADE"
        for p in target.ports
    ]


def owned_by(line: str, app: str) -> bool:
    """Whether a rule in a shared chain is one of the app's (its comment starts with "<app> forward")."""
    match = _COMMENT.search(line)
    comment = (match.group(1) if match.group(1) is not None else match.group(2)) if match else ""
    return comment.replace('\\"', '"').startswith(f"{app} forward")


def jumps_to(table: SavedTable, chain: str) -> list[str]:
    """Every rule in another chain that jumps to `chain`."""
    return [
        line
        for name, lines in table.chains.items()
        if name != chain
        for line in lines
        if (m := _JUMP.search(line)) and m.group(1) == chain
    ]


def _shared_chain(live: SavedTable, chain: str, app: str, wanted: Sequence[str], jump: str) -> list[str]:
    """Lines of one table's transaction: the app's rules in a shared chain become `wanted`.

    The chain is rewritten whole (declaring it in a restore flushes it) with the other apps'
    rules kept; a chain left empty is deleted with every jump to it.
    """
    current = live.rules(chain)
    keep = [line for line in current if not owned_by(line, app)]
    lines = keep + list(wanted)
    jumps = jumps_to(live, chain)
    if lines:
        if lines == current and jumps:
            return []
        body = [f":{chain} - [0:0]", *lines]
        return body if jumps else body + [jump]
    if not live.has_chain(chain):
        return []
    return [*(j.replace("-A ", "-D ", 1) for j in jumps), f"-F {chain}", f"-X {chain}"]


def render_extras(
    filter_table: SavedTable,
    nat_table: SavedTable,
    names: ChainNames,
    app: str,
    target: Target | None,
    *,
    ipv6: bool = False,
) -> str | None:
    """The filter and nat transactions that give the app exactly `target`'s accept and masquerade
    rules (none for None), touching no other app's. None when nothing needs to change.

    `ipv6`: the tables are ip6tables', and the rules those of the target's IPv6 address (none without one).
    Without Docker's DOCKER-USER (ip6tables, whose FORWARD Docker leaves alone) the jump goes first in FORWARD.
    """
    parent = "DOCKER-USER" if filter_table.has_chain("DOCKER-USER") else "FORWARD"
    sections = []
    filter_lines = _shared_chain(
        filter_table,
        forward_chain(names),
        app,
        accept_rules(names, app, target, ipv6=ipv6) if target else [],
        f"-I {parent} 1 -j {forward_chain(names)}",
    )
    if filter_lines:
        sections += ["*filter", *filter_lines, "COMMIT"]
    nat_lines = _shared_chain(
        nat_table,
        snat_chain(names),
        app,
        masquerade_rules(names, app, target, ipv6=ipv6) if target else [],
        f"-A POSTROUTING -j {snat_chain(names)}",
    )
    if nat_lines:
        sections += ["*nat", *nat_lines, "COMMIT"]
    return "\n".join([*sections, ""]) if sections else None


def render_extras_teardown(filter_table: SavedTable, nat_table: SavedTable, names: ChainNames) -> str | None:
    """Remove both shared chains whole, and the jumps to them."""
    sections = []
    for table_name, table, chain in (
        ("filter", filter_table, forward_chain(names)),
        ("nat", nat_table, snat_chain(names)),
    ):
        if table.has_chain(chain):
            sections += [
                f"*{table_name}",
                *(j.replace("-A ", "-D ", 1) for j in jumps_to(table, chain)),
                f"-F {chain}",
                f"-X {chain}",
                "COMMIT",
            ]
    return "\n".join([*sections, ""]) if sections else None


# --- the return path on the old host --------------------------------------------------------------


@dataclass(frozen=True)
class ReturnPath:
    """Replies to connections that came through the new host go back through it."""

    via: str  # the new host's address on the shared link
    dev: str  # that link (an Ethernet device or a tunnel)
    lladdr: str | None  # the new host's MAC on it; None on a link without one (a tunnel)
    mark: int = DEFAULT_MARK
    table: int = DEFAULT_TABLE
    priority: int = DEFAULT_PRIORITY
    via6: str | None = None  # the new host's IPv6 address on the link: IPv6 replies return too

    @property
    def fwmark(self) -> str:
        return f"{self.mark:#x}/{self.mark:#x}"

    def via_of(self, ipv6: bool) -> str | None:
        return self.via6 if ipv6 else self.via

    def record(self, **extra: Any) -> dict[str, Any]:
        return {
            "via": self.via,
            **({"via6": self.via6} if self.via6 else {}),
            "dev": self.dev,
            "lladdr": self.lladdr,
            "mark": self.mark,
            "table": self.table,
            "priority": self.priority,
            **extra,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> ReturnPath:
        return cls(
            via=data["via"],
            dev=data["dev"],
            lladdr=data.get("lladdr"),
            mark=int(data["mark"]),
            table=int(data["table"]),
            priority=int(data["priority"]),
            via6=data.get("via6"),
        )


def return_addresses(given: Sequence[str]) -> tuple[str, str | None]:
    """`--via`: the new host's IPv4 address on the link, and its IPv6 one (or None); at most one of each family."""
    found: dict[int, str] = {}
    for via in given:
        try:
            parsed = ipaddress.ip_address(via)
        except ValueError:
            raise InvalidForwarding(f"--via {via!r} is not an IPv4 or IPv6 address") from None
        if (
            parsed.is_loopback
            or parsed.is_multicast
            or parsed.is_unspecified
            or getattr(parsed, "scope_id", None)
            or (isinstance(parsed, ipaddress.IPv6Address) and (parsed.is_link_local or parsed.ipv4_mapped))
        ):
            raise InvalidForwarding(
                f"--via {via} is not the unicast address of another host"
                + (": give its global or unique local IPv6 address on the link" if parsed.version == 6 else "")
            )
        if parsed.version in found:
            raise InvalidForwarding(
                f"--via {found[parsed.version]} and --via {parsed}: at most one address of each family "
                "(the new host's IPv4 address on the link, and its IPv6 one)"
            )
        found[parsed.version] = str(parsed)
    if 4 not in found:
        raise InvalidForwarding("--via needs the new host's IPv4 address on the link (and may add its IPv6 one)")
    return found[4], found.get(6)


def check_return_arguments(via: str, dev: str, mark: int, table: int, priority: int) -> None:
    """Bad input, refused before any fact is gathered."""
    return_addresses([via])
    if not re.fullmatch(r"[A-Za-z0-9_.@:-]{1,15}", dev) or dev in (".", ".."):
        raise InvalidForwarding(f"--dev {dev!r} is not an interface name")
    if mark <= 0 or mark > 0xFFFFFFFF or mark & (mark - 1):
        raise InvalidForwarding(
            f"--mark {mark:#x} must be a single bit, e.g. 0x2000000: it is matched with "
            "itself as the mask, so other marks on the packet stay"
        )
    if not 1 <= table <= 0xFFFFFFFF or table in (253, 254, 255):
        raise InvalidForwarding(
            f"--table {table} must be a routing table number other than 253, 254 and 255 (default, main, local)"
        )
    if not 1 <= priority <= 32765:
        raise InvalidForwarding(f"--priority {priority} must be from 1 to 32765 (before the main table's rule)")


def return_rules(
    names: ChainNames, path: ReturnPath, *, mark_new: bool = True, ipv6: bool = False
) -> dict[str, list[str]]:
    """The mangle chains: mark new connections from the new host; copy the mark onto their replies.

    CONNMARK sets the connection's mark, not the packet's, so the forwarded packets themselves
    are routed as usual; only reply-direction packets get the packet mark that `ip rule` sees:
    in OUTPUT when a local process answers, in PREROUTING when a container's answer is forwarded.
    `mark_new=False` renders the restore rules alone, to let open connections finish at --off. `ipv6`:
    ip6tables' chains, the same rules (the new host's MAC is one for both families) naming its IPv6 address.
    """
    chain, local = return_chain(names), return_local_chain(names)
    mark = f"{path.mark:#x}"
    restore = (
        f"-m conntrack --ctdir REPLY -m connmark --mark {path.fwmark} -j CONNMARK --restore-mark "
        f"--nfmask {mark} --ctmask {mark}"
    )
    source = f"-m mac --mac-source {path.lladdr.lower()} " if path.lladdr else ""
    rules = (
        [
            f"-A {chain} -i {path.dev} {source}-m conntrack --ctstate NEW -m comment --comment "
            f"{save_string(f'deployer: forwarded by {path.via_of(ipv6)}')} -j CONNMARK --set-xmark {path.fwmark}"
        ]
        if mark_new
        else []
    )
    return {chain: rules + [f"-A {chain} {restore}"], local: [f"-A {local} {restore}"]}


def unmarked_flows(path: ReturnPath, addresses: Iterable[str], *, ipv6: bool = False) -> list[list[str]]:
    """conntrack filters for flows that reached `addresses` before the return path marked them.

    Connection tracking decides once per flow, so a flow that began before `forward-return` stays
    unmarked and its replies keep leaving through the old host's uplink: a client whose SYN is
    still being retried never gets an answer, and a UDP client that keeps sending from the same
    port never does either. Deleting those entries lets the next packet start a flow that gets the
    mark. Only TCP handshakes that never completed (SYN_RECV) and UDP flows are taken: an
    established TCP connection was never one of these, and it would break if its entry went.
    `ipv6`: the link's IPv6 addresses, in conntrack's IPv6 table.
    """
    unmarked, family = f"0/{path.mark:#x}", ["-f", "ipv6"] if ipv6 else []
    filters = []
    for address in sorted(set(addresses)):
        filters.append([*family, "-p", "tcp", "--orig-dst", address, "--mark", unmarked, "--state", "SYN_RECV"])
        filters.append([*family, "-p", "udp", "--orig-dst", address, "--mark", unmarked])
    return filters


def render_return(
    mangle: SavedTable, names: ChainNames, path: ReturnPath | None, *, mark_new: bool = True, ipv6: bool = False
) -> str | None:
    """One mangle transaction: both chains rewritten whole (None: removed), jumps ensured first in line.
    `ipv6`: ip6tables' mangle table, whose chains go when the path names no IPv6 address."""
    if ipv6 and path is not None and path.via6 is None:
        path = None
    wanted = return_rules(names, path, mark_new=mark_new, ipv6=ipv6) if path else {}
    hooks = {return_chain(names): "PREROUTING", return_local_chain(names): "OUTPUT"}
    lines: list[str] = []
    for chain, hook in hooks.items():
        jumps = jumps_to(mangle, chain)
        if chain in wanted:
            if mangle.rules(chain) == wanted[chain] and jumps:
                continue
            lines += [f":{chain} - [0:0]", *wanted[chain]]
            if not jumps:
                lines.append(f"-I {hook} 1 -j {chain}")
        elif mangle.has_chain(chain):
            lines += [*(j.replace("-A ", "-D ", 1) for j in jumps), f"-F {chain}", f"-X {chain}"]
    return "\n".join(["*mangle", *lines, "COMMIT", ""]) if lines else None


def route_commands(path: ReturnPath, rules_now: Sequence[Mapping[str, Any]], *, ipv6: bool = False) -> list[list[str]]:
    """The table's default route first, then the rule that sends marked packets to it (added once). `ipv6`: the
    same with `ip -6`, through the new host's IPv6 address (none when the path names none)."""
    via, family = path.via_of(ipv6), "-6" if ipv6 else "-4"
    if via is None:
        return []
    commands = [["ip", family, "route", "replace", "default", "via", via, "dev", path.dev, "table", str(path.table)]]
    if not any(_is_our_rule(rule, path) for rule in rules_now):
        commands.append(
            [
                "ip",
                family,
                "rule",
                "add",
                "fwmark",
                path.fwmark,
                "lookup",
                str(path.table),
                "priority",
                str(path.priority),
            ]
        )
    return commands


def route_removal_commands(
    path: ReturnPath,
    rules_now: Sequence[Mapping[str, Any]],
    table_routes: Sequence[Mapping[str, Any]],
    *,
    ipv6: bool = False,
) -> list[list[str]]:
    """The rule first (so nothing is sent to an emptied table), then the table's routes; `ipv6`: `ip -6`'s.

    Without a record (`path.via` empty) the table counts as ours only while our rule points at it:
    somebody else's table of the same number is left alone.
    """
    family = "-6" if ipv6 else "-4"
    commands = [
        ["ip", family, "rule", "del", "fwmark", path.fwmark, "lookup", str(path.table), "priority", str(path.priority)]
        for rule in rules_now
        if _is_our_rule(rule, path)
    ]
    if table_routes and (path.via_of(ipv6) or commands):
        commands.append(["ip", family, "route", "flush", "table", str(path.table)])
    return commands


def _mark_of(rule: Mapping[str, Any]) -> tuple[int, int] | None:
    if "fwmark" not in rule:
        return None
    return int(str(rule["fwmark"]), 0), int(str(rule.get("fwmask", "0xffffffff")), 0)


def _is_our_rule(rule: Mapping[str, Any], path: ReturnPath) -> bool:
    return (
        rule.get("priority") == path.priority
        and _mark_of(rule) == (path.mark, path.mark)
        and str(rule.get("table")) == str(path.table)
        and set(rule) <= {"priority", "src", "fwmark", "fwmask", "table"}
    )


# --- facts and preflight decisions ----------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """`ip -4 route get ADDRESS`: how this host reaches an address."""

    kind: str | None  # "unicast", "local", ... ; None: no route
    dev: str | None = None
    gateway: str | None = None
    source: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Peer:
    """Whether a peer answered one ICMP echo, and what the neighbour table knows of it."""

    echo: bool
    lladdr: str | None = None
    state: tuple[str, ...] = ()

    @property
    def neighbour(self) -> bool:
        return bool(self.lladdr) and bool(_REACHABLE_STATES & set(self.state))

    @property
    def answers(self) -> bool:
        return self.echo or self.neighbour


@dataclass(frozen=True)
class Link:
    name: str
    exists: bool
    up: bool = False
    arp: bool = True  # False on links without link-layer addresses (tunnels): no MAC to match
    addresses: tuple[str, ...] = ()  # its IPv4 addresses: where the new host's forwarded flows arrive
    addresses6: tuple[str, ...] = ()  # its global IPv6 addresses, the same for IPv6


@dataclass(frozen=True)
class FamilyFacts:
    """How this host reaches one address of the old host: its route, whether it answers, its TCP ports."""

    route: Route
    peer: Peer
    ports: Mapping[int, str | None] = field(default_factory=dict)  # tcp port -> None if it accepted, else why


@dataclass(frozen=True)
class ForwardFacts:
    ip_forward: bool
    ip_forward_writable: bool
    route: Route
    peer: Peer
    ports: Mapping[int, str | None] = field(default_factory=dict)  # tcp port -> None if it accepted, else why
    ipv6: FamilyFacts | None = None  # the same of the old host's IPv6 address, when the forward names one


@dataclass(frozen=True)
class ReturnFacts:
    link: Link
    route: Route
    rp_filter_all: int
    rp_filter_dev: int | None
    peer: Peer
    rules: Sequence[Mapping[str, Any]]  # `ip -j -4 rule show`
    table_routes: Sequence[Mapping[str, Any]]  # `ip -j -4 route show table N`
    recorded: Mapping[str, Any] | None = None  # the forward-return record, if one is set up
    ipv6: ReturnFamily | None = None  # the same of the new host's IPv6 address, when the path names one


@dataclass(frozen=True)
class ReturnFamily:
    """The IPv6 side of the return path's facts: the route to the new host's IPv6 address, its answer, and
    `ip -6 rule` and `ip -6 route show table N`."""

    route: Route
    peer: Peer
    rules: Sequence[Mapping[str, Any]]
    table_routes: Sequence[Mapping[str, Any]]


def check_forward(
    app: str, target: Target, facts: ForwardFacts, mode: str, mode_detail: Mapping[str, Any]
) -> list[str]:
    """Everything wrong with forwarding `app` to `target` on this host; empty when it may go ahead."""
    problems = []
    if mode not in (SERVING, MODE):
        problems.append(f"app {app!r} is in mode {mode!r}; leave it first")
    elif mode == MODE and mode_detail.get("to") != target.address:
        problems.append(
            f"app {app!r} already forwards to {mode_detail.get('to')}; run `deployer forward {app} --off` first"
        )
    elif mode == MODE and mode_detail.get("to6") not in (None, target.address6):
        problems.append(
            f"app {app!r} already forwards IPv6 clients to {mode_detail.get('to6')}; "
            f"run `deployer forward {app} --off` first"
        )
    problems += _check_address(target.address, target.masquerade, FamilyFacts(facts.route, facts.peer, facts.ports))
    if facts.route.kind not in (None, "local") and not facts.ip_forward and not facts.ip_forward_writable:
        problems.append("IPv4 forwarding is off (net.ipv4.ip_forward=0) and cannot be switched on here")
    if target.address6 is not None and facts.ipv6 is not None:
        problems += _check_address(target.address6, target.masquerade, facts.ipv6)
    return problems


def _check_address(address: str, masquerade: bool, facts: FamilyFacts) -> list[str]:
    """What is wrong with one address of the old host: a loop, no route, a gateway where a link is needed, silence."""
    route = facts.route
    if route.kind == "local":
        return [f"{address} is an address of this host: forwarding to it would loop"]
    if route.kind is None:
        return [f"no route to {address}" + (f" ({route.error})" if route.error else "")]
    problems = []
    if route.kind != "unicast":
        problems.append(f"{address} is a {route.kind} route, not a host")
    if not masquerade and route.gateway:
        problems.append(
            f"{address} is reached through the gateway {route.gateway} on {route.dev}, not on a "
            f"link of its own: keeping client addresses needs a direct link or a tunnel to the old host, "
            f"whose replies come back the same way; use --masquerade over a routed network"
        )
    if not facts.peer.answers and not any(error is None for error in facts.ports.values()):
        where = f" on {route.dev}" if route.dev else ""
        problems.append(f"{address} does not answer{where}: no ICMP echo reply, no neighbour entry")
    shown = f"[{address}]" if ":" in address else address
    for port, error in sorted(facts.ports.items()):
        if error is not None:
            problems.append(
                f"{shown}:{port}/tcp does not accept connections from this host ({error}): "
                f"is the app running on the old host?"
            )
    return problems


def check_return(path: ReturnPath, facts: ReturnFacts) -> list[str]:
    """Everything wrong with routing replies back through `path` on this host (both families when it names the
    new host's IPv6 address and `facts.ipv6` says how this host reaches it)."""
    problems = []
    link = facts.link
    if not link.exists:
        return [f"there is no interface {path.dev!r}"]
    if not link.up:
        problems.append(f"interface {path.dev} is down")
    recorded = facts.recorded
    if recorded and (recorded.get("via"), recorded.get("dev")) != (path.via, path.dev):
        problems.append(
            f"replies already return via {recorded.get('via')} on {recorded.get('dev')}; run "
            f"`deployer forward-return --off` first"
        )
    elif recorded and recorded.get("via6") not in (None, path.via6):
        problems.append(
            f"IPv6 replies already return via {recorded.get('via6')}; run `deployer forward-return --off` first"
        )
    problems += _on_link(path.via, path.dev, facts.route)
    effective = max(facts.rp_filter_all, facts.rp_filter_dev or 0)
    if effective == 1:
        which = "all" if facts.rp_filter_all == 1 else path.dev
        problems.append(
            f"strict reverse-path filtering on {path.dev} (net.ipv4.conf.{which}.rp_filter=1) drops "
            f"forwarded packets, whose client sources route elsewhere: set it to loose, e.g. "
            f"sysctl -w net.ipv4.conf.{which}.rp_filter=2"
            + (f" (and net.ipv4.conf.{path.dev}.rp_filter to 0 or 2)" if which == "all" else "")
        )
    problems += _answers(path.via, path.dev, link, facts.route, facts.peer)
    problems += _rules_and_table(path, path.via, facts.rules, facts.table_routes, recorded, "")
    six = facts.ipv6
    if path.via6 is not None and six is not None:
        problems += _on_link(path.via6, path.dev, six.route)
        problems += _answers(path.via6, path.dev, link, six.route, six.peer)
        if facts.peer.lladdr and six.peer.lladdr and facts.peer.lladdr.lower() != six.peer.lladdr.lower():
            problems.append(
                f"{path.via} and {path.via6} are not the same host on {path.dev} (MAC {facts.peer.lladdr} and "
                f"{six.peer.lladdr}): both must be the new host's addresses on that link"
            )
        problems += _rules_and_table(path, path.via6, six.rules, six.table_routes, recorded, "-6 ")
    return problems


def _on_link(via: str, dev: str, route: Route) -> list[str]:
    """The new host must be a neighbour on `dev`: the route to it is that link's, without a gateway."""
    if route.kind == "local":
        return [f"{via} is an address of this host"]
    if route.kind is not None and route.dev == dev and not route.gateway:
        return []
    how = (
        "there is no route to it"
        if route.kind is None
        else f"it is reached through {route.gateway} on {route.dev}"
        if route.gateway
        else f"it is reached on {route.dev}"
    )
    return [
        f"{via} is not on {dev}'s link ({how}): the new host must be a neighbour on {dev}, over a layer-2 link "
        "or a tunnel"
    ]


def _answers(via: str, dev: str, link: Link, route: Route, peer: Peer) -> list[str]:
    """The new host answers on the link, with a MAC address to recognise its packets by (on a link with them)."""
    if route.kind in (None, "local"):
        return []
    if not peer.answers:
        return [f"{via} does not answer on {dev}: no ICMP echo reply, no neighbour entry"]
    if link.arp and not peer.lladdr:
        return [f"{via} has no MAC address on {dev} in the neighbour table, so its packets cannot be recognised"]
    return []


def _rules_and_table(
    path: ReturnPath,
    via: str,
    rules_now: Sequence[Mapping[str, Any]],
    table_routes: Sequence[Mapping[str, Any]],
    recorded: Mapping[str, Any] | None,
    family: str,
) -> list[str]:
    """Another `ip rule` of the priority, mark or table, or routes of somebody else's in the table (`family`:
    "" for IPv4, "-6 " for IPv6, as the messages name the command)."""
    problems = []
    for rule in rules_now:
        if _is_our_rule(rule, path):
            continue
        clash = []
        if rule.get("priority") == path.priority:
            clash.append(f"priority {path.priority}")
        mark = _mark_of(rule)
        if mark and mark[0] & mark[1] & path.mark:
            clash.append(f"mark {path.mark:#x}")
        if str(rule.get("table")) == str(path.table):
            clash.append(f"table {path.table}")
        if clash:
            problems.append(
                f"ip {family}rule {describe_rule(rule)} already uses {' and '.join(clash)}: choose others "
                f"with --priority, --mark or --table"
            )
    ours = [
        r for r in table_routes if r.get("dst") == "default" and r.get("gateway") == via and r.get("dev") == path.dev
    ]
    others = [r for r in table_routes if r not in ours]
    if others and not (recorded and int(recorded.get("table", -1)) == path.table):
        problems.append(
            f"{'IPv6 ' if family else ''}routing table {path.table} is in use ({len(others)} route(s), e.g. "
            f"{describe_route(others[0])}): choose another with --table"
        )
    return problems


def describe_rule(rule: Mapping[str, Any]) -> str:
    parts = [f"{rule.get('priority')}:", f"from {rule.get('src', 'all')}"]
    if "fwmark" in rule:
        parts.append(f"fwmark {rule['fwmark']}" + (f"/{rule['fwmask']}" if "fwmask" in rule else ""))
    parts.append(f"lookup {rule.get('table')}")
    return " ".join(parts)


def describe_route(route: Mapping[str, Any]) -> str:
    parts = [str(route.get("dst", "?"))]
    if route.get("gateway"):
        parts.append(f"via {route['gateway']}")
    if route.get("dev"):
        parts.append(f"dev {route['dev']}")
    return " ".join(parts)


# --- parsing what `ip -j` prints -------------------------------------------------------------------


def parse_route_get(data: Iterable[Mapping[str, Any]]) -> Route:
    entries = list(data)
    if not entries:
        return Route(kind=None, error="no route")
    entry = entries[0]
    return Route(
        kind=entry.get("type", "unicast"),
        dev=entry.get("dev"),
        gateway=entry.get("gateway"),
        source=entry.get("prefsrc"),
    )


def parse_link(name: str, data: Iterable[Mapping[str, Any]]) -> Link:
    entries = [e for e in data if e.get("ifname") == name]
    if not entries:
        return Link(name, exists=False)
    entry = entries[0]
    flags = set(entry.get("flags", []))
    has_mac = entry.get("link_type") in ("ether", "ieee802.1q") and "NOARP" not in flags
    infos = entry.get("addr_info", [])
    addresses = tuple(a["local"] for a in infos if a.get("family") == "inet" and a.get("local"))
    addresses6 = tuple(
        a["local"] for a in infos if a.get("family") == "inet6" and a.get("local") and a.get("scope") == "global"
    )
    return Link(
        name,
        exists=True,
        up="UP" in flags and "LOWER_UP" in flags,
        arp=has_mac,
        addresses=addresses,
        addresses6=addresses6,
    )


def parse_neighbour(address: str, data: Iterable[Mapping[str, Any]]) -> tuple[str | None, tuple[str, ...]]:
    for entry in data:
        if entry.get("dst") == address:
            return entry.get("lladdr"), tuple(entry.get("state", []))
    return None, ()
