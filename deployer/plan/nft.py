"""Render the deployer's own nftables table, as nft's input language; pure, like rules.py for iptables.

Two layouts. The nftables backend (host/nft_backend.py) uses the second one, at the end of this module: the
chains of rules.py mirrored in the table, translated both ways. The first, port maps, is what the bench measures
as the flip's floor on nftables and the layout the plain forwards are to move to; its layout:

    table ip deployer
      map tcp-ports { type inet_service : ipv4_addr . inet_service; size 65536; }  external port -> instance
      map udp-ports { ... }                                              (every app's ports, one map a protocol)
      set maintenance-tcp { type inet_service; }                         tcp ports sent to the responder
      chain prerouting  { nat hook prerouting priority dstnat - 5;  fib daddr type local jump serve }
      chain output      { nat hook output priority -105;            fib daddr type local jump serve }
      chain serve       { maintenance redirect; dnat through tcp-ports; dnat through udp-ports }
      chain postrouting { nat hook postrouting priority srcnat + 5;  127.0.0.0/8 out the bridge: masquerade }

Priorities just before Docker's iptables-nft nat chains (dstnat, -100), so no DNAT of Docker's shadows ours.
nft 1.0.6 accepts the `dstnat` keyword on prerouting only, hence -105 on output.

One map per protocol for all apps, not one per app: external ports are unique on a host (the config checks),
and nft reads every set's header before each command, so per-app maps made a flip cost grow with the number
of apps (0.2 ms with one, 11 ms with 1,000, 107 ms with 10,000 here); one map keyed by port stays at 0.15 ms.
Sized for every port there is, so the kernel never grows it in the middle of a flip (without the size, the
commit was x1.45 slower at 10,000 ports than at one).

A flip deletes the app's ports as they were read and adds the wanted elements, in one transaction. The
transaction checks the read's keys: deleting a port that is not there, or adding one that is still there, is
refused whole. So a commit proves that each of the app's ports now leads to the wanted instance, with no
read-back. (nft deletes an element by its key: which instance a port led to before is the read's word alone,
under the netfilter lock, and decides only which old flows conntrack cleanup deletes.)

Each feature renders in a function of its own. A canary split would be one more: a rule in `serve`, before
the DNAT through the maps, `tcp dport <port> dnat ip to numgen random mod 100 map { 0-89 : <a> . <p>,
90-99 : <b> . <p> }` (or `jhash ip saddr mod 100` for a sticky split), rendered from the split's weights.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Iterable, Sequence

from deployer.errors import RulesError
from deployer.plan.rules import LOOPBACK, Forward, save_string

PROTOCOLS = ("tcp", "udp")
MAINTENANCE_SET = "maintenance-tcp"


def table_name(prefix: str) -> str:
    """The table's name, from the chain prefix (DEPLOYER -> deployer)."""
    return prefix.lower()


def map_name(protocol: str) -> str:
    return f"{protocol}-ports"


def element(forward: Forward) -> str:
    """One map element: `18080 : 172.18.0.3 . 80`."""
    return f"{forward.external} : {forward.to_address} . {forward.to_port}"


def _by_protocol(forwards: Iterable[Forward], protocol: str) -> list[Forward]:
    return sorted((f for f in forwards if f.protocol == protocol), key=lambda f: f.external)


def declarations(table: str) -> list[str]:
    """The table, its maps, its set and its chains; `add` leaves what exists as it is."""
    return [
        f"add table ip {table}",
        *(f"add map ip {table} {map_name(p)} {{ type inet_service : ipv4_addr . inet_service; size 65536; }}"
          for p in PROTOCOLS),
        f"add set ip {table} {MAINTENANCE_SET} {{ type inet_service; }}",
        f"add chain ip {table} prerouting {{ type nat hook prerouting priority dstnat - 5; policy accept; }}",
        f"add chain ip {table} output {{ type nat hook output priority -105; policy accept; }}",
        f"add chain ip {table} postrouting {{ type nat hook postrouting priority srcnat + 5; policy accept; }}",
        f"add chain ip {table} serve",
    ]


def hook_rules(table: str, bridge: str) -> list[str]:
    """Local destinations from outside (prerouting) and from the host (output) go through `serve`."""
    return [
        f"add rule ip {table} prerouting fib daddr type local jump serve",
        f"add rule ip {table} output fib daddr type local jump serve",
        # A client on 127.0.0.1 is DNATed to a container, which cannot answer 127.0.0.1 (see rules.py).
        f'add rule ip {table} postrouting ip saddr {LOOPBACK} oifname "{bridge}" masquerade',
    ]


def serve_rules(table: str, maintenance_port: int) -> list[str]:
    """The maintenance redirect first (tcp only: the responder speaks HTTP), then the DNAT through each map."""
    return [
        f"add rule ip {table} serve tcp dport @{MAINTENANCE_SET} redirect to :{maintenance_port}",
        *(f"add rule ip {table} serve dnat ip to {p} dport map @{map_name(p)}" for p in PROTOCOLS),
    ]


def render_table(table: str, bridge: str, maintenance_port: int, forwards: Sequence[Forward],
                 maintenance_ports: Sequence[int] = ()) -> str:
    """The whole table in one transaction (a host's first write, and reconcile): every chain, map and set
    emptied and filled, so the result is the rendered state whatever was there."""
    lines = declarations(table)
    lines += [f"flush chain ip {table} {c}" for c in ("prerouting", "output", "postrouting", "serve")]
    lines += [f"flush map ip {table} {map_name(p)}" for p in PROTOCOLS]
    lines += [f"flush set ip {table} {MAINTENANCE_SET}"]
    lines += hook_rules(table, bridge) + serve_rules(table, maintenance_port)
    lines += add_elements(table, forwards)
    if maintenance_ports:
        lines.append(f"add element ip {table} {MAINTENANCE_SET} {{ {', '.join(map(str, sorted(maintenance_ports)))} }}")
    return "\n".join([*lines, ""])


def add_elements(table: str, forwards: Iterable[Forward]) -> list[str]:
    lines = []
    for protocol in PROTOCOLS:
        found = _by_protocol(forwards, protocol)
        if found:
            lines.append(f"add element ip {table} {map_name(protocol)} {{ {', '.join(map(element, found))} }}")
    return lines


def delete_elements(table: str, forwards: Iterable[Forward]) -> list[str]:
    lines = []
    for protocol in PROTOCOLS:
        found = _by_protocol(forwards, protocol)
        if found:
            ports = ", ".join(str(f.external) for f in found)
            lines.append(f"delete element ip {table} {map_name(protocol)} {{ {ports} }}")
    return lines


def render_flip(table: str, before: Sequence[Forward], wanted: Sequence[Forward]) -> str | None:
    """The flip of one app: its elements as read deleted, the wanted ones added, in one transaction; None
    when nothing changes."""
    def keyed(forwards: Sequence[Forward]) -> list[tuple[str, str]]:
        return sorted((f.protocol, element(f)) for f in forwards)

    if keyed(before) == keyed(wanted):
        return None
    return "\n".join([*delete_elements(table, before), *add_elements(table, wanted), ""])


def render_maintenance(table: str, ports: Sequence[int], on: bool) -> str:
    """Send an app's tcp ports to the responder (on) or back to their instance (off); one transaction."""
    verb = "add" if on else "delete"
    return f"{verb} element ip {table} {MAINTENANCE_SET} {{ {', '.join(map(str, sorted(ports)))} }}\n"


def render_teardown(table: str) -> str:
    """Remove the table and everything in it."""
    return f"delete table ip {table}\n"


# --- the nftables backend: the iptables layout, mirrored in the deployer's own table ------------------------
#
# A rule added to a table costs nft a read of every chain's header first (12 ms with 10,000 chains here, the
# same for any rule), so this layout's flip grows with the number of apps past a thousand, where the port maps'
# does not (docs/benchmarks.md). The backend keeps the chains rules.py draws (PREROUTING, OUTPUT, POSTROUTING as base chains of the table, then
# DEPLOYER, DEPLOYER-<app>, DEPLOYER-POSTROUTING), and translates each rule both ways through the forms below:
# the host layer renders iptables-restore text as it does for iptables, and reads back iptables-save lines, so a
# flip, reconcile and drift detection are the same code and the same string comparison on either backend. A
# rule outside these forms is refused before anything is applied.

BASE_CHAINS = {
    "PREROUTING": "type nat hook prerouting priority dstnat - 5; policy accept;",
    "OUTPUT": "type nat hook output priority -105; policy accept;",
    "POSTROUTING": "type nat hook postrouting priority srcnat + 5; policy accept;",
}
COMMENT_LIMIT = 128  # nft refuses a longer comment, and one with a double quote in it

_IPT_FIELDS = {"p": r"tcp|udp", "port": r"\d+", "to": r"\d+", "addr": r"\d+\.\d+\.\d+\.\d+",
               "src": r"\d+\.\d+\.\d+\.\d+/\d+", "target": r"[A-Za-z0-9_-]+", "out": r"[A-Za-z0-9_.-]+",
               "comment": r'"(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+'}
_NFT_FIELDS = {**_IPT_FIELDS, "out": r'"[A-Za-z0-9_.-]+"', "comment": r'"[^"]*"'}


@dataclass(frozen=True)
class RuleForm:
    """One rule the backend can write: its iptables-save body (after `-A CHAIN `) and its nft text."""

    iptables: str
    nft: str


FORMS = (
    RuleForm("-p {p} -m {p} --dport {port} -m comment --comment {comment} -j DNAT --to-destination {addr}:{to}",
             "{p} dport {port} dnat to {addr}:{to} comment {comment}"),
    RuleForm("-p tcp -m tcp --dport {port} -m comment --comment {comment} -j REDIRECT --to-ports {to}",
             "tcp dport {port} redirect to :{to} comment {comment}"),
    RuleForm("-m addrtype --dst-type LOCAL -j {target}", "fib daddr type local jump {target}"),
    RuleForm("-s {src} -o {out} -m comment --comment {comment} -j MASQUERADE",
             "ip saddr {src} oifname {out} masquerade comment {comment}"),
    RuleForm("-j {target}", "jump {target}"),
)


def _pattern(template: str, fields: dict[str, str]) -> re.Pattern[str]:
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{fields[name]})")
            seen.add(name)
    return re.compile("".join(parts))


_TO_NFT = [(form, _pattern(form.iptables, _IPT_FIELDS)) for form in FORMS]
_TO_IPTABLES = [(form, _pattern(form.nft, _NFT_FIELDS)) for form in FORMS]
_TARGETS = ("DNAT", "REDIRECT", "MASQUERADE", "SNAT", "RETURN", "ACCEPT", "DROP")


def _unsave(value: str) -> str:
    """iptables-save's quoting undone (the inverse of rules.save_string)."""
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def rule_to_nft(body: str) -> str:
    """One iptables rule body as nft text; RulesError when the backend cannot write it."""
    for form, pattern in _TO_NFT:
        match = pattern.fullmatch(body)
        if match is None or match.groupdict().get("target") in _TARGETS:
            continue
        values = dict(match.groupdict())
        if "comment" in values:
            comment = _unsave(values["comment"])
            if '"' in comment or len(comment) > COMMENT_LIMIT:
                raise RulesError(f"the nftables backend cannot write the comment {comment!r}: nft takes at most "
                                 f"{COMMENT_LIMIT} characters and no double quote", rules=body)
            values["comment"] = f'"{comment}"'
        if "out" in values:
            values["out"] = f'"{values["out"]}"'
        return form.nft.format(**values)
    raise RulesError('the nftables backend cannot express this rule (it needs backend = "iptables" for now)',
                     rules=body)


def rule_to_iptables(chain: str, text: str) -> str:
    """One rule of `nft list` as iptables-save prints its counterpart; a rule of no known form keeps its nft
    text in a comment, so it never equals a wanted rule and drift detection reports it."""
    for form, pattern in _TO_IPTABLES:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        values = dict(match.groupdict())
        if "comment" in values:
            values["comment"] = save_string(values["comment"][1:-1])
        if "out" in values:
            values["out"] = values["out"][1:-1]
        return f"-A {chain} {form.iptables.format(**values)}"
    return f"-A {chain} -m comment --comment {save_string('nft: ' + text)}"


@dataclass(frozen=True)
class Listing:
    """The table as `nft -a list table` printed it: chain -> its rules as iptables-save lines, with handles."""

    chains: dict[str, list[tuple[str, int]]]

    def saved(self) -> str:
        """As `iptables-save -t nat` would print these chains."""
        lines = ["*nat"]
        lines += [f":{c} ACCEPT [0:0]" if c in BASE_CHAINS else f":{c} - [0:0]" for c in self.chains]
        lines += [rule for rules in self.chains.values() for rule, _ in rules]
        return "\n".join([*lines, "COMMIT", ""])

    def rules(self, chain: str) -> list[str] | None:
        found = self.chains.get(chain)
        return None if found is None else [rule for rule, _ in found]


_CHAIN_LINE = re.compile(r"chain (\S+) \{(?: # handle \d+)?$")
_HANDLE = re.compile(r"^(.*) # handle (\d+)$")


def parse_listing(listing: str) -> Listing:
    """`nft -a list table ip T` (or `list chain`): each chain's rules, translated, with their handles."""
    chains: dict[str, list[tuple[str, int]]] = {}
    chain: str | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        header = _CHAIN_LINE.fullmatch(line)
        if header:
            chain = header.group(1)
            chains[chain] = []
        elif line == "}":
            chain = None
        elif chain is not None and line and not line.startswith("type "):
            match = _HANDLE.fullmatch(line)
            text, handle = (match.group(1), int(match.group(2))) if match else (line, 0)
            chains[chain].append((rule_to_iptables(chain, text), handle))
    return Listing(chains)


def base_declarations(table: str) -> list[str]:
    """The table and its three base chains; `add` leaves what exists as it is."""
    return [f"add table ip {table}", *(f"add chain ip {table} {c} {{ {spec} }}" for c, spec in BASE_CHAINS.items())]


def translate_restore(text: str, table: str, live: Listing | None = None) -> tuple[str, str]:
    """An iptables-restore --noflush transaction as (nft commands for its nat part, the other tables' text).

    The nat part becomes one nft transaction in the deployer's table; filter and mangle stay iptables' (the
    forwarding and the watchdog's chains). A deletion of a rule needs its handle: `live` is the table as read.
    """
    nat: list[str] = []
    other: list[str] = []
    section: str | None = None
    touches_base = removes_table = False
    handles = {chain: list(rules) for chain, rules in (live.chains if live else {}).items()}
    for line in text.splitlines():
        if line.startswith("*"):
            section = line[1:]
            if section != "nat":
                other.append(line)
            continue
        if section != "nat":
            if section is not None:
                other.append(line)
            if line == "COMMIT":
                section = None
            continue
        if line == "COMMIT":
            section = None
        elif line.startswith(":"):
            chain = line[1:].split(" ", 1)[0]
            if chain in BASE_CHAINS:
                touches_base = True
            else:
                nat += [f"add chain ip {table} {chain}", f"flush chain ip {table} {chain}"]
        elif line.startswith(("-A ", "-I ", "-D ")):
            verb, chain, rest = line.split(" ", 2)
            touches_base = touches_base or chain in BASE_CHAINS
            if verb == "-I":
                position, _, rest = rest.partition(" ")
                if position != "1":
                    raise RulesError("the nftables backend inserts at the top of a chain only", rules=line)
                nat.append(f"insert rule ip {table} {chain} {rule_to_nft(rest)}")
            elif verb == "-A":
                nat.append(f"add rule ip {table} {chain} {rule_to_nft(rest)}")
            else:
                saved = f"-A {chain} {rest}"
                found = next((i for i, (rule, _) in enumerate(handles.get(chain, [])) if rule == saved), None)
                if found is None:
                    raise RulesError("no such rule to delete", rules=line)
                nat.append(f"delete rule ip {table} {chain} handle {handles[chain].pop(found)[1]}")
        elif line.startswith("-F "):
            nat.append(f"flush chain ip {table} {line[3:]}")
        elif line.startswith("-X "):
            nat.append(f"delete chain ip {table} {line[3:]}")
            removes_table = removes_table or line[3:] == table.upper()
        elif line.strip() and not line.startswith("#"):
            raise RulesError("the nftables backend cannot apply this line", rules=line)
    if nat and touches_base:
        nat = base_declarations(table) + nat
    if removes_table:  # the teardown: the base chains go with the top chain, and the table with them
        nat.append(f"delete table ip {table}")
    return ("\n".join([*nat, ""]) if nat else ""), ("\n".join([*other, ""]) if other else "")
