"""An app chain's rules as the table holds them: elements of the maps, and canary splits; and back as iptables rules.

The first rule that takes a port whole wins in a chain, and only that one is kept: an add-only takeover replaces
what it shadows, and the tidy after it has nothing left to do. The view orders an app's rules as nft evaluates
them and the engine renders them (maintenance redirects, splits, then the forwards in the order of the app's
ports), so drift detection compares the same text on both backends.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from deployer.errors import RulesError
from deployer.plan.canary import probability
from deployer.plan.nft.family import IP, Family, destination
from deployer.plan.nft.forms import CANNOT, written_comment
from deployer.plan.nft.layout import MAINTENANCE, MAP_TYPES, Key, map_name
from deployer.plan.rules import Forward, save_string


@dataclass(frozen=True)
class Element:
    """One element of a map: an app chain's rule for one port."""

    map: str
    port: int
    comment: str
    value: str  # "172.18.0.3 . 80" (or "fd42:d0c::3 . 80") in a protocol's map; the responder's port in maintenance-tcp

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
            return (
                f"-A {chain} -p tcp -m tcp --dport {self.port} -m comment --comment {save_string(self.comment)}"
                f" -j REDIRECT --to-ports {self.value}"
            )
        address, port = self.value.split(" . ")
        return dnat_rule(chain, self.key[0], self.port, "", self.comment, destination(address, port))


def dnat_rule(chain: str, protocol: str, port: int, test: str, comment: str, target: str) -> str:
    """A DNAT of an app chain as iptables-save prints it; `test`: a canary's match, or none."""
    return (
        f"-A {chain} -p {protocol} -m {protocol} --dport {port} {test}{' ' if test else ''}-m comment --comment "
        f"{save_string(comment)} -j DNAT --to-destination {target}"
    )


def element(forward: Forward) -> Element:
    return Element(
        map_name(forward.protocol), forward.external, forward.comment, f"{forward.to_address} . {forward.to_port}"
    )


_SAVED_COMMENT = r'(?P<comment>"(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+)'
_REDIRECT = re.compile(
    rf"-p tcp -m tcp --dport (?P<port>\d+) -m comment --comment {_SAVED_COMMENT} -j REDIRECT --to-ports (?P<to>\d+)"
)


@dataclass(frozen=True)
class _Patterns:
    """An app chain's rules in a table of one family: a DNAT, a split as iptables-save prints it and as nft
    lists it."""

    dnat: re.Pattern[str]
    split_iptables: re.Pattern[str]
    split_nft: re.Pattern[str]


@functools.cache
def _patterns(family: Family) -> _Patterns:
    to = family.destination_pattern()
    return _Patterns(
        re.compile(
            rf"-p (?P<p>tcp|udp) -m (?P=p) --dport (?P<port>\d+) -m comment --comment {_SAVED_COMMENT} "
            rf"-j DNAT --to-destination {to}"
        ),
        re.compile(
            r"-p (?P<p>tcp|udp) -m (?P=p) --dport (?P<port>\d+) (?:-m statistic --mode random "
            r"--probability (?P<probability>0\.\d+)|-m cluster "
            r"--cluster-local-nodemask 0x(?P<mask>[0-9a-f]{8}) --cluster-total-nodes (?P<total>\d+) "
            r"--cluster-hash-seed 0x(?P<seed>[0-9a-f]{8})) "
            rf"-m comment --comment {_SAVED_COMMENT} -j DNAT --to-destination {to}"
        ),
        re.compile(
            r"(?P<p>tcp|udp) dport (?P<port>\d+) (?:numgen random mod 100 < (?P<weight>\d+)|"
            rf"jhash {re.escape(family.cluster_key)} mod (?P<total>\d+) seed 0x(?P<seed>[0-9a-f]+) < (?P<nodes>\d+)) "
            rf'dnat to {to} comment "(?P<comment>[^"]*)"'
        ),
    )


def element_of(chain: str, body: str, family: Family = IP) -> Element:
    """One rule of an app chain (its body, after `-A CHAIN `) as an element; RulesError when it is none."""
    match = _patterns(family).dnat.fullmatch(body)
    if match:
        found = Element(
            map_name(match["p"]),
            int(match["port"]),
            written_comment(match["comment"], body),
            f"{match['addr']} . {match['to']}",
        )
    else:
        match = _REDIRECT.fullmatch(body)
        if match is None:
            raise RulesError(CANNOT, rules=f"-A {chain} {body}")
        found = Element(MAINTENANCE, int(match["port"]), written_comment(match["comment"], body), match["to"])
    _check_owner(chain, body, found.comment)
    return found


def _check_owner(chain: str, body: str, comment: str) -> None:
    if f"{chain.split('-', 1)[0]}-{comment.split(' ', 1)[0]}" != chain:
        raise RulesError(
            f"the nftables backend names a rule's app by its comment's first word, and "
            f"{comment!r} does not name the app of {chain}",
            rules=f"-A {chain} {body}",
        )


@dataclass(frozen=True)
class Split:
    """A canary's rule for one port (canary.py): a share of new flows DNATed, the rest fall through to the
    port's element. A rule of the splits chain, not an element."""

    protocol: str
    port: int
    comment: str
    nft: str  # as nft lists it
    family: Family = field(default=IP, repr=False)

    @property
    def key(self) -> Key:
        return (self.protocol, self.port)

    @property
    def owner(self) -> str:
        return self.comment.split(" ", 1)[0]

    def rule(self, chain: str) -> str:
        """As iptables-save prints the rule."""
        match = _patterns(self.family).split_nft.fullmatch(self.nft)
        assert match is not None
        if match["weight"] is not None:
            test = f"-m statistic --mode random --probability {probability(int(match['weight']))}"
        else:
            test = (
                f"-m cluster --cluster-local-nodemask 0x{(1 << int(match['nodes'])) - 1:08x} --cluster-total-nodes "
                f"{match['total']} --cluster-hash-seed 0x{int(match['seed'], 16):08x}"
            )
        return dnat_rule(chain, self.protocol, self.port, test, self.comment, destination(match["addr"], match["to"]))


def split_of(body: str, family: Family = IP) -> Split | None:
    """A canary's split rule (its body, after `-A CHAIN `) for the splits chain; None when it is none.

    The random split is `numgen random mod 100 < weight`: the statistic match's probability is the weight's
    (canary.probability), so nothing else reads back the same. The sticky one hashes the client address as
    xt_cluster does (family.cluster_key): the same jhash of the same bytes, and `< nodes` is the mask of the
    low nodes that canary.py sets; a mask of any other shape is not a split canary.py renders.
    """
    match = _patterns(family).split_iptables.fullmatch(body)
    if match is None:
        return None
    comment = written_comment(match["comment"], body)
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
        test = f"jhash {family.cluster_key} mod {total} seed {int(match['seed'], 16):#x} < {nodes}"
    target = destination(match["addr"], match["to"])
    text = f'{match["p"]} dport {match["port"]} {test} dnat to {target} comment "{comment}"'
    return Split(match["p"], int(match["port"]), comment, text, family)


def split_listed(text: str, family: Family = IP) -> Split | None:
    """A rule of the splits chain as nft lists it; None when it is not one of the deployer's."""
    match = _patterns(family).split_nft.fullmatch(text)
    return None if match is None else Split(match["p"], int(match["port"]), match["comment"], text, family)


Rule = Element | Split


def rule_of(chain: str, body: str, family: Family = IP) -> Rule:
    """One rule of an app chain: an element, or a canary's split; RulesError when it is neither."""
    found = split_of(body, family)
    if found is None:
        return element_of(chain, body, family)
    _check_owner(chain, body, found.comment)
    return found


def effective(chain: str, lines: Iterable[str], family: Family = IP) -> tuple[list[Element], list[Split]]:
    """An app chain's rules as elements and splits: the first rule that takes a port whole, as in a chain, and
    the splits before it; what comes after it for that port is dropped (it would never match).

    nft looks up the maintenance redirects before the splits: a redirect behind a split of its port cannot be
    written so, and is refused.
    """
    taken: set[Key] = set()
    split: set[Key] = set()
    elements, splits = [], []
    for line in lines:
        found = rule_of(chain, line.split(" ", 2)[2], family)
        if found.key in taken:
            continue
        if isinstance(found, Split):
            split.add(found.key)
            splits.append(found)
            continue
        if found.map == MAINTENANCE and found.key in split:
            raise RulesError(
                "the nftables backend looks up a maintenance redirect before a canary's split; "
                "it cannot put one behind the other",
                rules=line,
            )
        taken.add(found.key)
        elements.append(found)
    return elements, splits


def app_view(chain: str, elements: Iterable[Element], splits: Iterable[Split], order: Sequence[Key]) -> list[str]:
    """An app's rules in the order nft evaluates them: maintenance redirects, splits, forwards."""
    found = ordered(elements, order)
    return (
        [e.rule(chain) for e in found if e.map == MAINTENANCE]
        + [s.rule(chain) for s in splits]
        + [e.rule(chain) for e in found if e.map != MAINTENANCE]
    )


def ordered(elements: Iterable[Element], order: Sequence[Key]) -> list[Element]:
    """The maintenance redirects first (they win), then the forwards; each by the app's ports, then the rest."""
    rank = {key: i for i, key in enumerate(order)}
    return sorted(elements, key=lambda e: (e.map != MAINTENANCE, rank.get(e.key, len(rank)), e.map, e.port))


def add_elements(table: str, elements: Iterable[Element], family: Family = IP) -> list[str]:
    lines = []
    for name in MAP_TYPES:
        found = [e.text() for e in elements if e.map == name]
        if found:
            lines.append(f"add element {family.name} {table} {name} {{ {', '.join(found)} }}")
    return lines


def delete_elements(table: str, elements: Iterable[Element], family: Family = IP) -> list[str]:
    lines = []
    for name in MAP_TYPES:
        found = [str(e.port) for e in elements if e.map == name]
        if found:
            lines.append(f"delete element {family.name} {table} {name} {{ {', '.join(found)} }}")
    return lines


def render_replace(table: str, before: Sequence[Element], wanted: Sequence[Element], family: Family = IP) -> str | None:
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
    return "\n".join([*delete_elements(table, gone, family), *add_elements(table, new, family), ""])
