"""The deployer's own nftables table, as nft's input language, and the iptables view of it; pure, like rules.py.

The nftables backend (host/netfilter/nftables.py) stands where iptables-restore does: the host layer renders
iptables-restore text and reads iptables-save lines as ever, and this module translates both ways. The table
it writes is not a copy of the chains, though:

    table ip deployer
      map tcp-ports       { type inet_service : ipv4_addr . inet_service; size 65536; }  port -> instance
      map udp-ports       { ... }
      map maintenance-tcp { type inet_service : inet_service; size 65536; }           port -> the responder's
      chain PREROUTING  { nat hook prerouting priority dstnat - 5;  fib daddr type local jump DEPLOYER }
      chain OUTPUT      { nat hook output priority -105;            fib daddr type local jump DEPLOYER }
      chain POSTROUTING { nat hook postrouting priority srcnat + 5; jump DEPLOYER-POSTROUTING }
      chain DEPLOYER    { redirect through maintenance-tcp; jump DEPLOYER-SPLITS;
                          dnat through tcp-ports; dnat through udp-ports }
      chain DEPLOYER-SPLITS      { the canaries' splits: numgen random, or jhash ip saddr }
      chain DEPLOYER-POSTROUTING { 127.0.0.0/8 out the bridge: masquerade }
      (chain DEPLOYER-HOSTBOUND, DEPLOYER-SNAT: the socket match, a forward's masquerade, when in use)

An app's chain (DEPLOYER-<app>) is no chain here. Each of its rules is one element of a map, with the rule's
comment ("web green v2"): a DNAT forward goes in its protocol's map, and a maintenance REDIRECT in
maintenance-tcp. A canary's split is a rule of DEPLOYER-SPLITS, before the maps, so what it does not take falls
through to the port's element. The comment's first word names the app, so the iptables view puts each back in
the app's chain, with the jump to it.

Why maps: nft reads every chain's header (and every set's) before any command, 12 to 16 ms with 10,000 chains
here. So a layout of one chain per app, or one map per app, makes a flip cost grow with the number of apps.
Three maps keyed by port do not: a flip replaces elements, and its commit stays flat. External ports are
unique on a host (the config checks), so one element per port holds an app chain's meaning. The first rule
that takes a port whole wins in a chain, and only that one is kept: an add-only takeover replaces what it
shadows, and the tidy after it has nothing left to do. The view orders an app's rules as nft evaluates them
and the engine renders them (maintenance redirects, splits, then the forwards in the order of the app's
ports), so drift detection compares the same text on both backends. An app with no rules at all (a host-bound
app out of maintenance, or one not deployed yet) has an empty chain of its name instead, unjumped to, so its
chain and jump still show where iptables would have an empty chain.

The other chains are chains, written through the rule forms below (each as iptables-save prints it and as
`nft list` prints it). A rule of no known form is refused before anything is applied, and one read back
comes as a comment that never equals a wanted rule. A table of the layout before the maps (one chain per app,
jumped to from the top chain) is moved app by app: each app's first write here adds its elements and removes
its old chain and jump in one transaction, while the other apps' old chains stay in front of the lookups.

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
from deployer.plan.canary import probability
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
COMMENT_LIMIT = 128  # nft refuses a longer comment, and one with a double quote in it
Key = tuple[str, int]  # (protocol, external port)
Order = Callable[[str], Sequence[Key]]  # an app's ports, in the order the engine renders its rules


def table_name(prefix: str) -> str:
    """The table's name, from the chain prefix (DEPLOYER -> deployer)."""
    return prefix.lower()


def map_name(protocol: str) -> str:
    return f"{protocol}-ports"


def splits_chain(prefix: str) -> str:
    """The canary splits of every app, in one chain (few apps run a canary at once)."""
    return f"{prefix}-SPLITS"


def dispatch(prefix: str) -> tuple[str, ...]:
    """The top chain's rules, as nft lists them: the maintenance redirect first, so it wins over anything else
    for its port, then the canary splits, then each protocol's forwards. A lookup that finds no element ends
    its rule, and the packet goes on."""
    return (f"meta l4proto tcp redirect to :tcp dport map @{MAINTENANCE}", f"jump {splits_chain(prefix)}",
            "dnat ip to tcp dport map @tcp-ports", "dnat ip to udp dport map @udp-ports")


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
    _check_owner(chain, body, found.comment)
    return found


def _check_owner(chain: str, body: str, comment: str) -> None:
    if f"{chain.split('-', 1)[0]}-{comment.split(' ', 1)[0]}" != chain:
        raise RulesError(f"the nftables backend names a rule's app by its comment's first word, and "
                         f"{comment!r} does not name the app of {chain}", rules=f"-A {chain} {body}")


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


@dataclass(frozen=True)
class Split:
    """A canary's rule for one port (canary.py): a share of new flows DNATed, the rest fall through to the
    port's element. A rule of the splits chain, not an element."""

    protocol: str
    port: int
    comment: str
    nft: str  # as nft lists it

    @property
    def key(self) -> Key:
        return (self.protocol, self.port)

    @property
    def owner(self) -> str:
        return self.comment.split(" ", 1)[0]

    def rule(self, chain: str) -> str:
        """As iptables-save prints the rule."""
        match = _SPLIT_NFT.fullmatch(self.nft)
        assert match is not None
        if match["weight"] is not None:
            test = f"-m statistic --mode random --probability {probability(int(match['weight']))}"
        else:
            test = (f"-m cluster --cluster-local-nodemask 0x{(1 << int(match['nodes'])) - 1:08x} --cluster-total-nodes "
                    f"{match['total']} --cluster-hash-seed 0x{int(match['seed'], 16):08x}")
        return (f"-A {chain} -p {self.protocol} -m {self.protocol} --dport {self.port} {test} -m comment --comment "
                f"{save_string(self.comment)} -j DNAT --to-destination {match['addr']}:{match['to']}")


_SPLIT_IPT = re.compile(r'-p (?P<p>tcp|udp) -m (?P=p) --dport (?P<port>\d+) (?:-m statistic --mode random '
                        r'--probability (?P<probability>0\.\d+)|-m cluster '
                        r'--cluster-local-nodemask 0x(?P<mask>[0-9a-f]{8}) --cluster-total-nodes (?P<total>\d+) '
                        r'--cluster-hash-seed 0x(?P<seed>[0-9a-f]{8})) '
                        r'-m comment --comment (?P<comment>"(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+) -j DNAT '
                        r'--to-destination (?P<addr>\d+\.\d+\.\d+\.\d+):(?P<to>\d+)')
_SPLIT_NFT = re.compile(r'(?P<p>tcp|udp) dport (?P<port>\d+) (?:numgen random mod 100 < (?P<weight>\d+)|jhash ip saddr '
                        r'mod (?P<total>\d+) seed 0x(?P<seed>[0-9a-f]+) < (?P<nodes>\d+)) dnat to '
                        r'(?P<addr>\d+\.\d+\.\d+\.\d+):(?P<to>\d+) comment "(?P<comment>[^"]*)"')


def split_of(body: str) -> Split | None:
    """A canary's split rule (its body, after `-A CHAIN `) for the splits chain; None when it is none.

    The random split is `numgen random mod 100 < weight`: the statistic match's probability is the weight's
    (canary.probability), so nothing else reads back the same. The sticky one hashes the client address as
    xt_cluster does: nft's `jhash ip saddr` is the same jhash of the same four bytes, and `< nodes` is the
    mask of the low nodes that canary.py sets; a mask of any other shape is not a split canary.py renders.
    """
    match = _SPLIT_IPT.fullmatch(body)
    if match is None:
        return None
    comment = _comment(match["comment"], body)
    if match["probability"] is not None:
        weight = round(float(match["probability"]) * 100)
        if not 1 <= weight <= 99 or probability(weight) != match["probability"]:
            return None
        test = f"numgen random mod 100 < {weight}"
    else:
        mask, total = int(match["mask"], 16), int(match["total"])
        nodes = mask.bit_length()
        if mask != (1 << nodes) - 1 or not 0 < nodes < total:
            return None
        test = f"jhash ip saddr mod {total} seed {int(match['seed'], 16):#x} < {nodes}"
    text = f'{match["p"]} dport {match["port"]} {test} dnat to {match["addr"]}:{match["to"]} comment "{comment}"'
    return Split(match["p"], int(match["port"]), comment, text)


def split_listed(text: str) -> Split | None:
    """A rule of the splits chain as nft lists it; None when it is not one of the deployer's."""
    match = _SPLIT_NFT.fullmatch(text)
    return None if match is None else Split(match["p"], int(match["port"]), match["comment"], text)


Rule = Element | Split


def rule_of(chain: str, body: str) -> Rule:
    """One rule of an app chain: an element, or a canary's split; RulesError when it is neither."""
    found = split_of(body)
    if found is None:
        return element_of(chain, body)
    _check_owner(chain, body, found.comment)
    return found


def effective(chain: str, lines: Iterable[str]) -> tuple[list[Element], list[Split]]:
    """An app chain's rules as elements and splits: the first rule that takes a port whole, as in a chain, and
    the splits before it; what comes after it for that port is dropped (it would never match).

    nft looks up the maintenance redirects before the splits: a redirect behind a split of its port cannot be
    written so, and is refused.
    """
    taken: set[Key] = set()
    split: set[Key] = set()
    elements, splits = [], []
    for line in lines:
        found = rule_of(chain, line.split(" ", 2)[2])
        if found.key in taken:
            continue
        if isinstance(found, Split):
            split.add(found.key)
            splits.append(found)
            continue
        if found.map == MAINTENANCE and found.key in split:
            raise RulesError("the nftables backend looks up a maintenance redirect before a canary's split; "
                             "it cannot put one behind the other", rules=line)
        taken.add(found.key)
        elements.append(found)
    return elements, splits


def app_view(chain: str, elements: Iterable[Element], splits: Iterable[Split], order: Sequence[Key]) -> list[str]:
    """An app's rules in the order nft evaluates them: maintenance redirects, splits, forwards."""
    found = ordered(elements, order)
    return ([e.rule(chain) for e in found if e.map == MAINTENANCE] + [s.rule(chain) for s in splits]
            + [e.rule(chain) for e in found if e.map != MAINTENANCE])


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

    def splits(self, prefix: str) -> list[Split]:
        """The splits chain's rules that are the deployer's."""
        return [found for text, _ in self.chains.get(splits_chain(prefix), [])
                if (found := split_listed(text)) is not None]

    def owned_splits(self, prefix: str, app: str) -> list[Split]:
        return [found for found in self.splits(prefix) if found.owner == app]

    def legacy_jumps(self, prefix: str) -> list[tuple[str, int]]:
        """The top chain's jumps to app chains: the layout before the maps had one chain per app. They stay in
        front of the lookups until each app's first write here moves its rules into the maps."""
        return [(text, handle) for text, handle in self.chains.get(prefix, [])
                if text.startswith(f"jump {prefix}-") and is_app_chain(text.removeprefix("jump "), prefix)]

    def dispatching(self, prefix: str, *, exact: bool = False) -> bool:
        """Whether the top chain holds the lookups through the maps and the jump to the splits, so every element
        and split is reached; `exact`: and nothing else (no app chain of the old layout is left)."""
        legacy = set() if exact else set(self.legacy_jumps(prefix))
        rules = tuple(text for text, handle in self.chains.get(prefix, []) if (text, handle) not in legacy)
        return (rules == dispatch(prefix) and splits_chain(prefix) in self.chains and set(MAP_TYPES) <= self.maps)

    def view(self, prefix: str, order: Order) -> dict[str, list[str]]:
        """The chains as iptables-save would print them: chain -> its rules, the app chains among them."""
        markers = {chain[len(prefix) + 1:]: found for chain, found in self.chains.items()
                   if is_app_chain(chain, prefix)}
        splits = self.splits(prefix)
        owners = sorted({e.owner for e in self.elements if e.comment} | {s.owner for s in splits} | set(markers))
        result: dict[str, list[str]] = {}
        for chain, found in self.chains.items():
            if chain == prefix:
                dispatching = self.dispatching(prefix)
                result[chain] = ([f"-A {prefix} -j {prefix}-{owner}" for owner in owners] if dispatching
                                 else [rule_to_iptables(chain, text) for text, _ in found])
            elif not is_app_chain(chain, prefix) and chain != splits_chain(prefix):
                result[chain] = [rule_to_iptables(chain, text) for text, _ in found]
        for owner in owners:
            chain = f"{prefix}-{owner}"
            result[chain] = app_view(chain, self.owned(owner), [s for s in splits if s.owner == owner], order(owner))
            result[chain] += [_foreign(chain, text) for text, _ in markers.get(owner, [])]  # not in this layout
        strays = [_foreign(prefix, f"{e.map} element {e.port} : {e.value}") for e in self.elements if not e.comment]
        strays += [_foreign(prefix, text) for text, _ in self.chains.get(splits_chain(prefix), [])
                   if split_listed(text) is None]
        if strays:  # not the deployer's: shown where drift detection sees it
            result.setdefault(prefix, []).extend(strays)
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


def dispatch_rules(table: str, prefix: str, kept: Iterable[str] = ()) -> list[str]:
    """The top chain emptied and given its lookups through the maps, and the splits chain; `kept`: jumps of
    the old layout that stay in front, to app chains not yet moved into the maps."""
    return [f"add chain ip {table} {splits_chain(prefix)}", f"add chain ip {table} {prefix}",
            f"flush chain ip {table} {prefix}", *(f"add rule ip {table} {prefix} {rule}" for rule in kept),
            *(f"add rule ip {table} {prefix} {rule}" for rule in dispatch(prefix))]


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
            keys.append(rule_of(chain, body).key)
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
    app's rules as the commit leaves them."""

    nat: str
    other: str
    apps: dict[str, tuple[list[Element], list[Split]]]
    removes_table: bool = False
    ready: bool = False  # the lookups, the maps and the splits chain are written, and nothing of the old layout
    markers: dict[str, bool] = field(default_factory=dict)  # app -> whether its empty chain is there after


def translate_restore(text: str, table: str, prefix: str, live: Table, *, whole: bool = True) -> Translation:
    """An iptables-restore --noflush transaction, translated.

    `live` is the table as read: whole, or (`whole=False`, for a transaction that writes app chains alone)
    the written apps' elements, whatever else holds the ports it names, and the splits chain. Each app chain
    the text writes is played out on its rules as read, line by line as iptables-restore would; the outcome
    becomes elements and splits (`effective`), and only the difference is written: elements replaced, the
    splits chain rewritten whole when a split changed. The other chains' lines become rules, a deletion by the
    handle read. filter and mangle stay iptables'.
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
            apps[chain] = app_view(chain, live.owned(owner), live.owned_splits(prefix, owner), ())
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
                rule_of(chain, rest)  # refused now if it cannot be written
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
                jumps = jumps or verb != "-D"  # a jump is the lookups; a deleted one goes with the app's rules
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

    result: dict[str, tuple[list[Element], list[Split]]] = {}
    before: list[Element] = []
    after: list[Element] = []
    splits_before = live.splits(prefix)
    splits_after = [found for found in splits_before if f"{prefix}-{found.owner}" not in apps]
    markers: dict[str, bool] = {}
    for chain, found in apps.items():
        app = chain[len(prefix) + 1:]
        result[app] = effective(chain, found)
        before += live.owned(app)
        after += result[app][0]
        splits_after += result[app][1]
        markers[app] = not result[app][0] and not result[app][1] and chain not in deleted
    taken = {e.key: e.owner for e in live.elements if e not in before}
    for e in after:
        if e.key in taken and e not in before:
            raise RulesError(f"port {e.port}/{e.key[0]} is already in the nftables maps, for "
                             f"{taken[e.key] or 'a rule not of the deployer'}", rules=e.rule(f"{prefix}-{e.owner}"))
    elements = render_replace(table, before, after)
    splits_changed = splits_after != splits_before
    rewrite_dispatch = whole and (declares_top or ((jumps or elements is not None or splits_changed or apps)
                                                   and not live.dispatching(prefix)))
    # An app chain here is an empty chain of an app with no rules, or a chain of the layout before the maps,
    # jumped to from the top chain: once written, an app's chain is empty (and kept) or gone, and never jumped.
    legacy = live.legacy_jumps(prefix)
    marker_commands: list[str] = []
    for chain in apps:
        app = chain[len(prefix) + 1:]
        if chain not in live.chains:
            if markers[app]:
                marker_commands.append(f"add chain ip {table} {chain}")
            continue
        if not rewrite_dispatch:  # else the top chain is rewritten without its jump
            marker_commands += [f"delete rule ip {table} {prefix} handle {handle}"
                                for text, handle in legacy if text == f"jump {chain}"]
        if live.chains[chain] or not markers[app]:
            marker_commands.append(f"flush chain ip {table} {chain}")
        if not markers[app]:
            marker_commands.append(f"delete chain ip {table} {chain}")
    kept_jumps = [text for text, _ in legacy if text.removeprefix("jump ") not in apps]

    nat: list[str] = []
    if whole and touches_base:
        nat += base_declarations(table)
    if rewrite_dispatch or (whole and (elements or marker_commands)):
        nat += map_declarations(table)[0 if not nat else 1:]
    if rewrite_dispatch:
        nat += dispatch_rules(table, prefix, kept_jumps)
    nat += chain_commands
    if elements:
        nat.append(elements.rstrip("\n"))
    if splits_changed:
        nat += [f"flush chain ip {table} {splits_chain(prefix)}",
                *(f"add rule ip {table} {splits_chain(prefix)} {found.nft}" for found in splits_after)]
    nat += marker_commands
    if not (elements or splits_changed or marker_commands or chain_commands or rewrite_dispatch):
        nat = []
    ready = whole and (rewrite_dispatch or live.dispatching(prefix)) and not kept_jumps
    return Translation("\n".join([*nat, ""]) if nat else "", others, result, ready=ready, markers=markers)
