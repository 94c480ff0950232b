"""Render the nat rules the deployer owns, as iptables-restore text; parse what iptables-save shows.

Pure code: nothing here runs a command. The layout, after kube-proxy's:

    PREROUTING  -m addrtype --dst-type LOCAL -j DEPLOYER     (outside clients)
    OUTPUT      -m addrtype --dst-type LOCAL -j DEPLOYER     (clients on the host itself)
    DEPLOYER    -j DEPLOYER-<app>                            (one jump per app)
    DEPLOYER-<app>  -p tcp -m tcp --dport 1000 ... -j DNAT --to-destination <instance>
    POSTROUTING -j DEPLOYER-POSTROUTING
    DEPLOYER-POSTROUTING -s 127.0.0.0/8 -o <bridge> -j MASQUERADE (loopback clients)

A flip rewrites one app chain in one `iptables-restore --noflush` transaction, so its cost does
not grow with the number of apps, and no other chain is touched. Missing jumps are ensured in
the same transaction. Rules are rendered exactly as iptables-save prints them, so the live
state can be compared with the wanted state as text.

IPv6 has the same layout in ip6tables' nat table (`ipv6=True`): the same chains and jumps, and each app chain the
IPv4 one with every instance's address swapped for its IPv6 address (`for_ipv6`), so every mode (serving,
maintenance, a canary's split, a drain) is one rendering for both families. One difference: a connection to ::1
is left alone (OUTPUT jumps only for other destinations), and DEPLOYER-POSTROUTING stays empty. IPv6 has no
route_localnet: Linux never sends a packet from ::1 out of another interface, masqueraded or not (RFC 4291 keeps
the loopback address inside the node), so a DNAT of it would hang the client; left alone, it is refused at once.
Clients on the host reach an app over IPv6 through any of the host's own addresses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BUILTIN_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
LOOPBACK = "127.0.0.0/8"
LOOPBACK6 = "::1/128"
_NO_QUOTE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Forward:
    """Send new flows to one external port on to `to_address:to_port`."""

    protocol: str
    external: int
    to_address: str
    to_port: int
    comment: str

    def rule(self, chain: str) -> str:
        return (
            f"-A {chain} -p {self.protocol} -m {self.protocol} --dport {self.external}"
            f" -m comment --comment {save_string(self.comment)}"
            f" -j DNAT --to-destination {self.to_address}:{self.to_port}"
        )


@dataclass(frozen=True)
class ChainNames:
    prefix: str

    @property
    def top(self) -> str:
        return self.prefix

    @property
    def postrouting(self) -> str:
        return f"{self.prefix}-POSTROUTING"

    def app(self, app: str) -> str:
        return f"{self.prefix}-{app}"

    def owns(self, chain: str) -> bool:
        return chain == self.top or chain.startswith(f"{self.prefix}-")


@dataclass
class SavedTable:
    """One table (nat, filter or mangle) as iptables-save shows it: chain name -> rule lines ("-A CHAIN ...")."""

    chains: dict[str, list[str]] = field(default_factory=dict)

    def rules(self, chain: str) -> list[str]:
        return self.chains.get(chain, [])

    def has_chain(self, chain: str) -> bool:
        return chain in self.chains


def save_string(value: str) -> str:
    """Quote like iptables-save (xtables_save_string), so rendered text equals saved text."""
    if _NO_QUOTE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{escaped}"'


def parse_table(saved: str, table: str) -> SavedTable:
    """One table of `iptables-save` output (nat, mangle, filter): chain name -> rule lines, in order."""
    result = SavedTable()
    inside = False
    for line in saved.splitlines():
        if line.startswith("*"):
            inside = line == f"*{table}"
        elif not inside or not line or line.startswith("#"):
            continue
        elif line == "COMMIT":
            inside = False
        elif line.startswith(":"):
            result.chains.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            result.chains.setdefault(line.split(" ", 2)[1], []).append(line)
    return result


def parse_nat(saved: str) -> SavedTable:
    """Parse `iptables-save -t nat` output."""
    return parse_table(saved, "nat")


def builtin_jumps(names: ChainNames, ipv6: bool = False) -> dict[str, str]:
    """The jump rule from each built-in chain into the deployer's chains, as saved."""
    unless_loopback = f"! -d {LOOPBACK6} " if ipv6 else ""
    return {
        "PREROUTING": f"-A PREROUTING -m addrtype --dst-type LOCAL -j {names.top}",
        "OUTPUT": f"-A OUTPUT {unless_loopback}-m addrtype --dst-type LOCAL -j {names.top}",
        "POSTROUTING": f"-A POSTROUTING -j {names.postrouting}",
    }


def postrouting_rules(names: ChainNames, bridge: str, ipv6: bool = False) -> list[str]:
    # A client on 127.0.0.1 is DNATed to a container; the reply must come back to an address the
    # container can route to, so loopback sources leaving through the bridge are masqueraded (see the module's
    # docstring for ::1).
    if ipv6:
        return []
    return [
        f"-A {names.postrouting} -s {LOOPBACK} -o {bridge} -m comment --comment "
        f"{save_string('deployer: loopback clients')} -j MASQUERADE"
    ]


def app_jump(names: ChainNames, app: str) -> str:
    return f"-A {names.top} -j {names.app(app)}"


def app_rules(names: ChainNames, app: str, forwards: Sequence[Forward]) -> list[str]:
    return [forward.rule(names.app(app)) for forward in forwards]


def render_restore(
    live: SavedTable,
    names: ChainNames,
    bridge: str,
    app_chains: Mapping[str, Sequence[str]],
    ensure_apps: Iterable[str] = (),
    ipv6: bool = False,
) -> str:
    """One iptables-restore --noflush transaction.

    Rewrites each chain in `app_chains` whole with the given rule lines (from `app_rules`, or
    the lines saved before a flip, to put them back), and ensures (adds only when missing) the top chain,
    the POSTROUTING chain, the jumps from the built-in chains and the jumps to each app chain in
    `app_chains` and `ensure_apps`. Chains not named here, and all foreign rules, are untouched. `ipv6`: the
    text for ip6tables.
    """
    declare: list[str] = []
    rules: list[str] = []
    if not live.has_chain(names.top):
        declare.append(names.top)
    wanted_post = postrouting_rules(names, bridge, ipv6)
    if not live.has_chain(names.postrouting) or live.rules(names.postrouting) != wanted_post:
        declare.append(names.postrouting)  # declaring a chain in a restore flushes it
        rules.extend(wanted_post)

    for app in sorted(set(app_chains) | set(ensure_apps)):
        chain = names.app(app)
        if app in app_chains:
            declare.append(chain)
            rules.extend(app_chains[app])
        elif not live.has_chain(chain):
            declare.append(chain)
        jump = app_jump(names, app)
        if jump not in live.rules(names.top):
            rules.append(jump)

    for builtin, jump in builtin_jumps(names, ipv6).items():
        if jump not in live.rules(builtin):
            body = jump.removeprefix(f"-A {builtin} ")
            # First in PREROUTING and OUTPUT, so no earlier DNAT of somebody else's shadows ours;
            # last in POSTROUTING, after other masquerades have had their say.
            rules.append(f"-A {builtin} {body}" if builtin == "POSTROUTING" else f"-I {builtin} 1 {body}")

    lines = ["*nat", *(f":{chain} - [0:0]" for chain in declare), *rules, "COMMIT", ""]
    return "\n".join(lines)


def render_takeover(names: ChainNames, app: str, wanted: Sequence[str], before: Sequence[str]) -> str:
    """The flip: put the wanted rules in front of the app chain in one add-only transaction.

    The first matching DNAT rule wins, so from the commit on every new flow takes the new rules
    and the old ones are shadowed. An add-only transaction commits in about a millisecond;
    one that also deletes rules waits for the kernel to retire them (some 15 ms here), which is
    left to `render_chain` afterwards, when it no longer delays the move.
    """
    chain = names.app(app)
    if not before:
        return "\n".join(["*nat", f":{chain} - [0:0]", *wanted, "COMMIT", ""])
    inserts = [f"-I {chain} 1 {rule.removeprefix(f'-A {chain} ')}" for rule in reversed(wanted)]
    return "\n".join(["*nat", *inserts, "COMMIT", ""])


def render_chain(names: ChainNames, app: str, lines: Sequence[str]) -> str:
    """Rewrite one app chain whole, in one transaction (after a takeover, or to restore it)."""
    return "\n".join(["*nat", f":{names.app(app)} - [0:0]", *lines, "COMMIT", ""])


def parse_chain_listing(listing: str, chain: str) -> list[str]:
    """The rules of `iptables -t nat -S CHAIN`, which prints them as iptables-save does."""
    return [line for line in listing.splitlines() if line.startswith(f"-A {chain} ")]


def render_removal(live: SavedTable, names: ChainNames, apps: Iterable[str]) -> str | None:
    """A transaction that removes apps' chains and their jumps (used when tests or operators clean up)."""
    rules: list[str] = []
    deletes: list[str] = []
    for app in sorted(apps):
        chain = names.app(app)
        jump = app_jump(names, app)
        if jump in live.rules(names.top):
            rules.append(jump.replace("-A ", "-D ", 1))
        if live.has_chain(chain):
            rules.append(f"-F {chain}")
            deletes.append(f"-X {chain}")
    if not rules and not deletes:
        return None
    return "\n".join(["*nat", *rules, *deletes, "COMMIT", ""])


def render_teardown(live: SavedTable, names: ChainNames) -> str | None:
    """Remove everything the deployer owns in the nat table: jumps first, then its chains."""
    rules: list[str] = []
    for builtin, jump in builtin_jumps(names).items():
        if jump in live.rules(builtin):
            rules.append(jump.replace("-A ", "-D ", 1))
    owned = [chain for chain in live.chains if names.owns(chain)]
    # Any other jump from a built-in chain into an owned one (e.g. PREFIX-HOSTBOUND, from PREROUTING only):
    # a chain that is still jumped to cannot be deleted.
    for builtin in BUILTIN_CHAINS:
        for rule in live.rules(builtin):
            target = rule.rsplit(" -j ", 1)[-1] if " -j " in rule else ""
            delete = rule.replace("-A ", "-D ", 1)
            if target in owned and delete not in rules:
                rules.append(delete)
    if not rules and not owned:
        return None
    flushes = [f"-F {chain}" for chain in owned]
    deletes = [f"-X {chain}" for chain in owned]
    return "\n".join(["*nat", *rules, *flushes, *deletes, "COMMIT", ""])


_COMMENT = re.compile(r' -m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+)')


def unshadowed(lines: Sequence[str]) -> list[str]:
    """The rules of one chain that can match a new flow: a rule with the same matches as an earlier one never
    does (what an add-only flip leaves behind it until its tidy)."""
    seen: set[str] = set()
    result = []
    for line in lines:
        key = _COMMENT.sub("", line).split(" -j ", 1)[0]
        if key not in seen:
            seen.add(key)
            result.append(line)
    return result


_DNAT_TARGET = re.compile(r"--to-destination (?:(\d+\.\d+\.\d+\.\d+)|\[([0-9a-f:]+)\]):(\d+)")


def dnat_destinations(rules: Iterable[str]) -> set[str]:
    """The instance addresses (IPv4, or IPv6 without brackets) the given rules send traffic to."""
    found = set()
    for rule in rules:
        match = _DNAT_TARGET.search(rule)
        if match:
            found.add(match.group(1) or match.group(2))
    return found


def for_ipv6(lines: Sequence[str], ipv6_of: Mapping[str, str]) -> list[str]:
    """An IPv4 app chain as the IPv6 one: each DNAT to an IPv4 address in `ipv6_of` goes to that address's IPv6
    twin (the same container), in ip6tables' spelling ([address]:port); a DNAT to an address without one (a
    forward to another host's IPv4 address, an instance started without IPv6) has no IPv6 rule. Every other rule
    (a maintenance REDIRECT) reads the same in both families."""
    result = []
    for line in lines:
        match = _DNAT_TARGET.search(line)
        if match is None:
            result.append(line)
        elif match.group(1) in ipv6_of:
            target = f"--to-destination [{ipv6_of[match.group(1)]}]:{match.group(3)}"
            result.append(line[: match.start()] + target + line[match.end() :])
    return result
