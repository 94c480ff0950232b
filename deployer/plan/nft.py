"""The deployer's own nftables table, as nft's input language, and the iptables view of it; pure, like rules.py.

The nftables backend (host/nft_backend.py) stands where iptables-restore does: the host layer renders
iptables-restore text and reads iptables-save lines as ever, and this module translates both ways. The table
it writes is not a copy of the chains, though:

    table ip deployer
      map tcp-ports       { type inet_service : ipv4_addr . inet_service; size 65536; }  port -> instance
      map udp-ports       { ... }
      map maintenance-tcp { type inet_service : inet_service; size 65536; }           port -> the responder's
      chain PREROUTING  { nat hook prerouting priority dstnat - 5;  fib daddr type local jump DEPLOYER }
      chain OUTPUT      { nat hook output priority -105;            fib daddr type local jump DEPLOYER }
      chain POSTROUTING { nat hook postrouting priority srcnat + 5; jump DEPLOYER-POSTROUTING }
      chain DEPLOYER    { redirect through maintenance-tcp; dnat through tcp-ports; dnat through udp-ports }
      chain DEPLOYER-POSTROUTING { 127.0.0.0/8 out the bridge: masquerade }

An app's chain (DEPLOYER-<app>) is no chain here. Each of its rules is one element of a map, with the rule's
comment ("web green v2"): a DNAT forward goes in its protocol's map, and a maintenance REDIRECT in
maintenance-tcp. The comment's first word names the app, so the iptables view puts it back in the app's
chain, with the jump to it. nft reads every chain's header (and every set's) before any command, 12 to 16 ms
with 10,000 chains here. So a layout of one chain per app, or one map per app, makes a flip cost grow with the
number of apps. Three maps keyed by port do not: a flip replaces elements, and its commit stays flat.
External ports are unique on a host (the config checks), so one element per port holds an app chain's
meaning. The first rule for a port wins in a chain, and only that one is kept as an element: an add-only
takeover replaces what it shadows, and the tidy after it has nothing left to do. The view orders an app's
rules as the engine renders them (maintenance redirects, then the forwards, in the order of the app's ports),
so drift detection compares the same text on both backends. An app with no rules at all (a host-bound app
out of maintenance, or one not deployed yet) has an empty chain of its name instead, unjumped to, so that its
chain and jump still show where iptables would have an empty chain.

The base chains and DEPLOYER-POSTROUTING are chains, written through the rule forms below (each as
iptables-save prints it and as `nft list` prints it). A rule of no known form is refused before anything is
applied, and one read back comes as a comment that never equals a wanted rule.

Priorities just before Docker's iptables-nft nat chains (dstnat, -100), so no DNAT of Docker's shadows ours.
nft 1.0.6 accepts the `dstnat` keyword on prerouting only, hence -105 on output. The maps are sized for every
port there is, so the kernel never grows one in the middle of a flip.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from deployer.errors import RulesError
from deployer.plan.rules import Forward, save_string

PROTOCOLS = ("tcp", "udp")
MAINTENANCE = "maintenance-tcp"
MAP_TYPES = {"tcp-ports": "ipv4_addr . inet_service", "udp-ports": "ipv4_addr . inet_service",
             MAINTENANCE: "inet_service"}
BASE_CHAINS = {
    "PREROUTING": "type nat hook prerouting priority dstnat - 5; policy accept;",
    "OUTPUT": "type nat hook output priority -105; policy accept;",
    "POSTROUTING": "type nat hook postrouting priority srcnat + 5; policy accept;",
}
# The top chain's rules, as nft lists them: the maintenance redirect first, so it wins over a forward of the
# same port, then each protocol's forwards. A lookup that finds no element ends its rule, and the packet goes on.
DISPATCH = (
    f"meta l4proto tcp redirect to :tcp dport map @{MAINTENANCE}",
    "dnat ip to tcp dport map @tcp-ports",
    "dnat ip to udp dport map @udp-ports",
)
COMMENT_LIMIT = 128  # nft refuses a longer comment, and one with a double quote in it

Key = tuple[str, int]  # (protocol, external port)
Order = Callable[[str], Sequence[Key]]  # an app's ports, in the order the engine renders its rules


def table_name(prefix: str) -> str:
    """The table's name, from the chain prefix (DEPLOYER -> deployer)."""
    return prefix.lower()


def map_name(protocol: str) -> str:
    return f"{protocol}-ports"


def is_app_chain(chain: str, prefix: str) -> bool:
    """DEPLOYER-web is an app's; DEPLOYER-POSTROUTING, -HOSTBOUND and the like are upper case, as no app is."""
    return chain.startswith(f"{prefix}-") and chain[len(prefix) + 1:][:1].islower()


# --- elements: the rules of an app chain -------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """One element of a map: an app chain's rule for one port."""

    map: str
    port: int
    comment: str
    value: str  # "172.18.0.3 . 80" in a protocol's map; the responder's port in maintenance-tcp

    @property
    def key(self) -> Key:
        return ("udp" if self.map == "udp-ports" else "tcp", self.port)

    @property
    def owner(self) -> str:
        return self.comment.split(" ", 1)[0]

    def text(self) -> str:
        return f'{self.port} comment "{self.comment}" : {self.value}'

    def rule(self, chain: str) -> str:
        """As iptables-save prints the rule."""
        if self.map == MAINTENANCE:
            return (f"-A {chain} -p tcp -m tcp --dport {self.port} -m comment --comment {save_string(self.comment)}"
                    f" -j REDIRECT --to-ports {self.value}")
        address, port = self.value.split(" . ")
        return Forward(self.key[0], self.port, address, int(port), self.comment).rule(chain)


def element(forward: Forward) -> Element:
    return Element(map_name(forward.protocol), forward.external, forward.comment,
                   f"{forward.to_address} . {forward.to_port}")


_DNAT = re.compile(r'-p (?P<p>tcp|udp) -m (?P=p) --dport (?P<port>\d+) -m comment --comment '
                   r'(?P<comment>"(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+) -j DNAT --to-destination '
                   r'(?P<addr>\d+\.\d+\.\d+\.\d+):(?P<to>\d+)')
_REDIRECT = re.compile(r'-p tcp -m tcp --dport (?P<port>\d+) -m comment --comment '
                       r'(?P<comment>"(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+) -j REDIRECT --to-ports (?P<to>\d+)')
CANNOT = 'the nftables backend cannot express this rule (it needs backend = "iptables" for now)'


def element_of(chain: str, body: str) -> Element:
    """One rule of an app chain (its body, after `-A CHAIN `) as an element; RulesError when it is none."""
    match = _DNAT.fullmatch(body)
    if match:
        found = Element(map_name(match["p"]), int(match["port"]), _comment(match["comment"], body),
                        f"{match['addr']} . {match['to']}")
    else:
        match = _REDIRECT.fullmatch(body)
        if match is None:
            raise RulesError(CANNOT, rules=f"-A {chain} {body}")
        found = Element(MAINTENANCE, int(match["port"]), _comment(match["comment"], body), match["to"])
    if f"{chain.split('-', 1)[0]}-{found.owner}" != chain:
        raise RulesError(f"the nftables backend names a rule's app by its comment's first word, and "
                         f"{found.comment!r} does not name the app of {chain}", rules=f"-A {chain} {body}")
    return found


def _comment(saved: str, body: str) -> str:
    comment = _unsave(saved)
    if '"' in comment or len(comment) > COMMENT_LIMIT:
        raise RulesError(f"the nftables backend cannot write the comment {comment!r}: nft takes at most "
                         f"{COMMENT_LIMIT} characters and no double quote", rules=body)
    return comment


def _unsave(value: str) -> str:
    """iptables-save's quoting undone (the inverse of rules.save_string)."""
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def effective(chain: str, lines: Iterable[str]) -> list[Element]:
    """An app chain's rules as elements: the first rule for a port, as in a chain, and the rest dropped."""
    seen: set[Key] = set()
    result = []
    for line in lines:
        found = element_of(chain, line.split(" ", 2)[2])
        if found.key not in seen:
            seen.add(found.key)
            result.append(found)
    return result


def ordered(elements: Iterable[Element], order: Sequence[Key]) -> list[Element]:
    """The maintenance redirects first (they win), then the forwards; each by the app's ports, then the rest."""
    rank = {key: i for i, key in enumerate(order)}
    return sorted(elements, key=lambda e: (e.map != MAINTENANCE, rank.get(e.key, len(rank)), e.map, e.port))


def add_elements(table: str, elements: Iterable[Element]) -> list[str]:
    lines = []
    for name in MAP_TYPES:
        found = [e.text() for e in elements if e.map == name]
        if found:
            lines.append(f"add element ip {table} {name} {{ {', '.join(found)} }}")
    return lines


def delete_elements(table: str, elements: Iterable[Element]) -> list[str]:
    lines = []
    for name in MAP_TYPES:
        found = [str(e.port) for e in elements if e.map == name]
        if found:
            lines.append(f"delete element ip {table} {name} {{ {', '.join(found)} }}")
    return lines


def map_declarations(table: str) -> list[str]:
    """The table and its maps; `add` leaves what exists as it is."""
    return [f"add table ip {table}",
            *(f"add map ip {table} {name} {{ type inet_service : {data}; size 65536; }}"
              for name, data in MAP_TYPES.items())]


def render_replace(table: str, before: Sequence[Element], wanted: Sequence[Element]) -> str | None:
    """What was read and is not wanted deleted, what is wanted and was not there added, in one transaction.

    nft deletes an element by its key, and refuses the whole transaction when the key is not there, or when an
    add meets a key that is still there: so a commit proves each port now leads where `wanted` says. An
    element whose comment alone changed is replaced too (an add of a present key with the same data keeps the
    old comment). None when nothing changes.
    """
    gone = [e for e in before if e not in wanted]
    new = [e for e in wanted if e not in before]
    if not gone and not new:
        return None
    return "\n".join([*delete_elements(table, gone), *add_elements(table, new), ""])


# --- the chains' rules ------------------------------------------------------------------------------------

_IPT_FIELDS = {"p": r"tcp|udp", "port": r"\d+", "to": r"\d+", "addr": r"\d+\.\d+\.\d+\.\d+",
               "src": r"\d+\.\d+\.\d+\.\d+/\d+", "target": r"[A-Za-z0-9_-]+", "out": r"[A-Za-z0-9_.-]+",
               "comment": r'"(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+'}
_NFT_FIELDS = {**_IPT_FIELDS, "out": r'"[A-Za-z0-9_.-]+"', "comment": r'"[^"]*"'}


@dataclass(frozen=True)
class RuleForm:
    """One rule of a chain the backend can write: its iptables-save body (after `-A CHAIN `) and its nft text."""

    iptables: str
    nft: str


FORMS = (
    RuleForm("-m addrtype --dst-type LOCAL -j {target}", "fib daddr type local jump {target}"),
    # The loopback clients' masquerade (rules.py).
    RuleForm("-s {src} -o {out} -m comment --comment {comment} -j MASQUERADE",
             "ip saddr {src} oifname {out} masquerade comment {comment}"),
    # A forward's masquerade towards the old host (forwarding.py): `--ctstate DNAT` is conntrack's DNAT status.
    RuleForm("-d {addr}/32 -p {p} -m {p} --dport {to} -m conntrack --ctstate DNAT -m comment --comment {comment} "
             "-j MASQUERADE", "ip daddr {addr} {p} dport {to} ct status dnat masquerade comment {comment}"),
    # A host-bound app's socket match (hostbound.py). `-m socket --nowildcard` matches when any socket takes the
    # packet, a listener on 0.0.0.0 too; nft's socket expression finds the same socket, and either value of
    # its transparent flag means one was found.
    RuleForm("-p tcp -m tcp --dport {port} -m socket --nowildcard -m comment --comment {comment} -j RETURN",
             "tcp dport {port} socket transparent {{ 0, 1 }} return comment {comment}"),
    RuleForm("-p tcp -m tcp --dport {port} -m comment --comment {comment} -j REDIRECT --to-ports {to}",
             "tcp dport {port} redirect to :{to} comment {comment}"),
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


def rule_to_nft(body: str) -> str:
    """One rule of a chain, its iptables body as nft text; RulesError when the backend cannot write it."""
    for form, pattern in _TO_NFT:
        match = pattern.fullmatch(body)
        if match is None or match.groupdict().get("target") in _TARGETS:
            continue
        values = dict(match.groupdict())
        if "comment" in values:
            values["comment"] = f'"{_comment(values["comment"], body)}"'
        if "out" in values:
            values["out"] = f'"{values["out"]}"'
        return form.nft.format(**values)
    raise RulesError(CANNOT, rules=body)


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
    return _foreign(chain, text)


def _foreign(chain: str, text: str) -> str:
    return f"-A {chain} -m comment --comment {save_string('nft: ' + text)}"


# --- reading ------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """The deployer's table as `nft -a list` printed it: each chain's rules (nft text, handle), the elements."""

    chains: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    elements: list[Element] = field(default_factory=list)
    maps: set[str] = field(default_factory=set)

    def owned(self, app: str) -> list[Element]:
        return [e for e in self.elements if e.owner == app]

    def dispatching(self, prefix: str) -> bool:
        """Whether the top chain holds exactly the lookups through the maps, so every element is reached."""
        return tuple(text for text, _ in self.chains.get(prefix, [])) == DISPATCH and set(MAP_TYPES) <= self.maps

    def view(self, prefix: str, order: Order) -> dict[str, list[str]]:
        """The chains as iptables-save would print them: chain -> its rules, the app chains among them."""
        markers = {chain[len(prefix) + 1:]: found for chain, found in self.chains.items()
                   if is_app_chain(chain, prefix)}
        owners = sorted({e.owner for e in self.elements if e.comment} | set(markers))
        result: dict[str, list[str]] = {}
        for chain, found in self.chains.items():
            if chain == prefix:
                dispatching = self.dispatching(prefix)
                result[chain] = ([f"-A {prefix} -j {prefix}-{owner}" for owner in owners] if dispatching
                                 else [rule_to_iptables(chain, text) for text, _ in found])
            elif not is_app_chain(chain, prefix):
                result[chain] = [rule_to_iptables(chain, text) for text, _ in found]
        for owner in owners:
            chain = f"{prefix}-{owner}"
            result[chain] = [e.rule(chain) for e in ordered(self.owned(owner), order(owner))]
            result[chain] += [_foreign(chain, text) for text, _ in markers.get(owner, [])]  # written by hand
        strays = [e for e in self.elements if not e.comment]
        if strays:  # not the deployer's: shown where drift detection sees it
            result.setdefault(prefix, []).extend(_foreign(prefix, f"{e.map} element {e.port} : {e.value}")
                                                 for e in strays)
        return result

    def saved(self, prefix: str, order: Order) -> str:
        """As `iptables-save -t nat` would print the deployer's chains."""
        chains = self.view(prefix, order)
        lines = ["*nat", *(f":{c} ACCEPT [0:0]" if c in BASE_CHAINS else f":{c} - [0:0]" for c in chains)]
        lines += [rule for found in chains.values() for rule in found]
        return "\n".join([*lines, "COMMIT", ""])


_CHAIN_LINE = re.compile(r"chain (\S+) \{(?: # handle \d+)?$")
_MAP_LINE = re.compile(r"map (\S+) \{(?: # handle \d+)?$")
_HANDLE = re.compile(r"^(.*) # handle (\d+)$")
_ELEMENT = re.compile(r'(\d+)(?: comment "([^"]*)")? : (\d+\.\d+\.\d+\.\d+ \. \d+|\d+)')


def parse_listing(listing: str) -> Table:
    """`nft -a list table ip T` (or `get element`): each chain's rules with their handles, each map's elements."""
    table = Table()
    chain: str | None = None
    current_map: str | None = None
    elements: list[str] | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        if elements is not None:  # inside `elements = { ... }`, which nft folds over lines
            elements.append(line)
            if line.endswith("}") and line.count('"') % 2 == 0:
                _add_elements(table, current_map, " ".join(elements))
                elements = None
            continue
        header, map_header = _CHAIN_LINE.fullmatch(line), _MAP_LINE.fullmatch(line)
        if header:
            chain = header.group(1)
            table.chains[chain] = []
        elif map_header:
            current_map = map_header.group(1)
            table.maps.add(current_map)
        elif line == "}":
            chain = current_map = None
        elif current_map is not None and line.startswith("elements = {"):
            elements = [line]
            if line.endswith("}"):
                _add_elements(table, current_map, line)
                elements = None
        elif chain is not None and line and not line.startswith("type "):
            match = _HANDLE.fullmatch(line)
            text, handle = (match.group(1), int(match.group(2))) if match else (line, 0)
            table.chains[chain].append((text, handle))
    return table


def _add_elements(table: Table, name: str | None, text: str) -> None:
    if name not in MAP_TYPES:
        return
    for match in _ELEMENT.finditer(text.removeprefix("elements = {")):
        table.elements.append(Element(name, int(match.group(1)), match.group(2) or "", match.group(3)))


# --- writing -------------------------------------------------------------------------------------------------


def base_declarations(table: str) -> list[str]:
    """The table and its three base chains; `add` leaves what exists as it is."""
    return [f"add table ip {table}", *(f"add chain ip {table} {c} {{ {spec} }}" for c, spec in BASE_CHAINS.items())]


def dispatch_rules(table: str, prefix: str) -> list[str]:
    """The top chain emptied and given its lookups through the maps."""
    return [f"add chain ip {table} {prefix}", f"flush chain ip {table} {prefix}",
            *(f"add rule ip {table} {prefix} {rule}" for rule in DISPATCH)]


def app_chains_only(text: str, prefix: str) -> bool:
    """Whether a transaction writes app chains and nothing else (a flip, its tidy, an app's removal): what it
    needs to know is then those apps' elements, not the whole table."""
    nat = _nat_lines(text)
    return bool(nat) and all(is_app_chain(_chain_of(line), prefix) for line in nat)


def _chain_of(line: str) -> str:
    parts = line.split(" ")
    return parts[0][1:] if line.startswith(":") else parts[1] if len(parts) > 1 else ""


def touched_apps(text: str, prefix: str) -> dict[str, list[Key]]:
    """The apps whose chains a transaction writes, with the ports its rules name."""
    found: dict[str, list[Key]] = {}
    for line in _nat_lines(text):
        chain = _chain_of(line)
        if not is_app_chain(chain, prefix):
            continue
        keys = found.setdefault(chain[len(prefix) + 1:], [])
        if line.startswith(("-A ", "-I ", "-D ")):
            body = line.split(" ", 3)[3] if line.startswith("-I ") else line.split(" ", 2)[2]
            keys.append(element_of(chain, body).key)
    return found


def has_nat(text: str) -> bool:
    return bool(_nat_lines(text))


def _nat_lines(text: str) -> list[str]:
    lines, section = [], None
    for line in text.splitlines():
        if line.startswith("*"):
            section = line[1:]
        elif line == "COMMIT":
            section = None
        elif section == "nat" and line.strip() and not line.startswith("#"):
            lines.append(line)
    return lines


@dataclass(frozen=True)
class Translation:
    """A restore's nat part as nft commands, the other tables' text for iptables-restore, and each written
    app's elements as the commit leaves them."""

    nat: str
    other: str
    apps: dict[str, list[Element]]
    removes_table: bool = False
    declares_maps: bool = False
    markers: dict[str, bool] = field(default_factory=dict)  # app -> whether its empty chain is there after


def translate_restore(text: str, table: str, prefix: str, live: Table, *, whole: bool = True) -> Translation:
    """An iptables-restore --noflush transaction, translated.

    `live` is the table as read: whole, or (`whole=False`, for a transaction that writes app chains alone)
    the written apps' elements and whatever else holds the ports it names. Each app chain the text writes is
    played out on its rules as read, line by line as iptables-restore would; the outcome becomes elements
    (`effective`), and only the difference is written. The other chains' lines become rules, a deletion by
    the handle read. filter and mangle stay iptables'.
    """
    other: list[str] = []
    chain_commands: list[str] = []
    apps: dict[str, list[str]] = {}  # app chain -> its rules, as the transaction leaves them
    deleted: set[str] = set()  # app chains the transaction removes (-X)
    section: str | None = None
    touches_base = declares_top = jumps = removes_table = False
    handles = {chain: list(found) for chain, found in live.chains.items()}

    def app_rules(chain: str) -> list[str]:
        if chain not in apps:
            owner = chain[len(prefix) + 1:]
            apps[chain] = [e.rule(chain) for e in ordered(live.owned(owner), ())]
        return apps[chain]

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
            elif is_app_chain(chain, prefix):
                app_rules(chain).clear()  # declaring a chain in a restore flushes it
            elif chain == prefix:
                declares_top = True
            else:
                chain_commands += [f"add chain ip {table} {chain}", f"flush chain ip {table} {chain}"]
        elif line.startswith(("-A ", "-I ", "-D ")):
            verb, chain, rest = line.split(" ", 2)
            if verb == "-I":
                position, _, rest = rest.partition(" ")
                if position != "1":
                    raise RulesError("the nftables backend inserts at the top of a chain only", rules=line)
            if is_app_chain(chain, prefix):
                found = app_rules(chain)
                element_of(chain, rest)  # refused now if it cannot be one
                if verb == "-A":
                    found.append(f"-A {chain} {rest}")
                elif verb == "-I":
                    found.insert(0, f"-A {chain} {rest}")
                elif f"-A {chain} {rest}" in found:
                    found.remove(f"-A {chain} {rest}")
                else:
                    raise RulesError("no such rule to delete", rules=line)
            elif chain == prefix:
                if not rest.startswith(f"-j {prefix}-"):
                    raise RulesError(CANNOT, rules=line)
                jumps = jumps or verb != "-D"  # a jump is the dispatch; a deleted one goes with the app's rules
            else:
                touches_base = touches_base or chain in BASE_CHAINS
                if verb == "-I":
                    chain_commands.append(f"insert rule ip {table} {chain} {rule_to_nft(rest)}")
                elif verb == "-A":
                    chain_commands.append(f"add rule ip {table} {chain} {rule_to_nft(rest)}")
                else:
                    wanted = rule_to_nft(rest)
                    at = next((i for i, (found_text, _) in enumerate(handles.get(chain, []))
                               if found_text == wanted), None)
                    if at is None:
                        raise RulesError("no such rule to delete", rules=line)
                    chain_commands.append(f"delete rule ip {table} {chain} handle {handles[chain].pop(at)[1]}")
        elif line.startswith("-F "):
            chain = line[3:]
            if is_app_chain(chain, prefix):
                app_rules(chain).clear()
            elif chain != prefix:
                chain_commands.append(f"flush chain ip {table} {chain}")
        elif line.startswith("-X "):
            chain = line[3:]
            if is_app_chain(chain, prefix):
                app_rules(chain).clear()
                deleted.add(chain)
            elif chain == prefix:
                removes_table = True
            else:
                chain_commands.append(f"delete chain ip {table} {chain}")
        elif line.strip() and not line.startswith("#"):
            raise RulesError("the nftables backend cannot apply this line", rules=line)

    others = ("\n".join([*other, ""]) if other else "")
    if removes_table:  # the teardown: everything the deployer owns in nat is this table
        return Translation(f"delete table ip {table}\n" if live.chains or live.maps else "", others, {}, True)
    before: list[Element] = []
    after: list[Element] = []
    result: dict[str, list[Element]] = {}
    markers: dict[str, bool] = {}
    marker_commands: list[str] = []
    for chain, found in apps.items():
        app = chain[len(prefix) + 1:]
        before += live.owned(app)
        result[app] = effective(chain, found)
        after += result[app]
        markers[app] = not result[app] and chain not in deleted
        if markers[app] and chain not in live.chains:
            marker_commands.append(f"add chain ip {table} {chain}")
        elif not markers[app] and chain in live.chains:
            marker_commands += [f"flush chain ip {table} {chain}", f"delete chain ip {table} {chain}"]
    taken = {e.key: e.owner for e in live.elements if e not in before}
    for e in after:
        if e.key in taken and e not in before:
            raise RulesError(f"port {e.port}/{e.key[0]} is already in the nftables maps, for "
                             f"{taken[e.key] or 'a rule not of the deployer'}", rules=e.rule(f"{prefix}-{e.owner}"))
    elements = render_replace(table, before, after)
    dispatch = declares_top or (jumps and not live.dispatching(prefix))
    nat: list[str] = []
    maps = whole and bool(elements or dispatch or marker_commands)
    if whole:
        if touches_base:
            nat += base_declarations(table)
        if maps:
            nat += map_declarations(table)[0 if not nat else 1:]
        if dispatch:
            nat += dispatch_rules(table, prefix)
    nat += chain_commands
    if elements:
        nat.append(elements.rstrip("\n"))
    nat += marker_commands
    if not (elements or marker_commands or chain_commands or dispatch):
        nat = []
    return Translation("\n".join([*nat, ""]) if nat else "", others, result, declares_maps=maps, markers=markers)
