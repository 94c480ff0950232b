"""The table read back: `nft -a list table` parsed, and the iptables view of it that drift detection compares.

An app with no rules at all (a host-bound app out of maintenance, or one not deployed yet) has an empty chain of
its name instead, unjumped to, so its chain and jump still show where iptables would have an empty chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from deployer.plan.nft.elements import Element, Split, app_view, split_listed
from deployer.plan.nft.family import FAMILIES, IP, Family
from deployer.plan.nft.forms import foreign, rule_to_iptables
from deployer.plan.nft.layout import BASE_CHAINS, MAP_TYPES, Order, dispatch, is_app_chain, splits_chain
from deployer.plan.nft.migrate import legacy_jumps


@dataclass
class Table:
    """The deployer's table as `nft -a list` printed it: each chain's rules (nft text, handle), the elements."""

    chains: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    elements: list[Element] = field(default_factory=list)
    maps: set[str] = field(default_factory=set)
    family: Family = IP

    def owned(self, app: str) -> list[Element]:
        return [e for e in self.elements if e.owner == app]

    def splits(self, prefix: str) -> list[Split]:
        """The splits chain's rules that are the deployer's."""
        return [
            found
            for text, _ in self.chains.get(splits_chain(prefix), [])
            if (found := split_listed(text, self.family)) is not None
        ]

    def owned_splits(self, prefix: str, app: str) -> list[Split]:
        return [found for found in self.splits(prefix) if found.owner == app]

    def legacy_jumps(self, prefix: str) -> list[tuple[str, int]]:
        """The top chain's jumps to app chains of the layout before the maps (migrate.py)."""
        return legacy_jumps(self.chains, prefix)

    def dispatching(self, prefix: str, *, exact: bool = False) -> bool:
        """Whether the top chain holds the lookups through the maps and the jump to the splits, so every element
        and split is reached; `exact`: and nothing else (no app chain of the old layout is left)."""
        legacy = set() if exact else set(self.legacy_jumps(prefix))
        rules = tuple(text for text, handle in self.chains.get(prefix, []) if (text, handle) not in legacy)
        return (
            rules == dispatch(prefix, self.family)
            and splits_chain(prefix) in self.chains
            and set(MAP_TYPES) <= self.maps
        )

    def view(self, prefix: str, order: Order) -> dict[str, list[str]]:
        """The chains as iptables-save would print them: chain -> its rules, the app chains among them."""
        markers = {
            chain[len(prefix) + 1 :]: found for chain, found in self.chains.items() if is_app_chain(chain, prefix)
        }
        splits = self.splits(prefix)
        owners = sorted({e.owner for e in self.elements if e.comment} | {s.owner for s in splits} | set(markers))
        result: dict[str, list[str]] = {}
        for chain, found in self.chains.items():
            if chain == prefix:
                dispatching = self.dispatching(prefix)
                result[chain] = (
                    [f"-A {prefix} -j {prefix}-{owner}" for owner in owners]
                    if dispatching
                    else [rule_to_iptables(chain, text, self.family) for text, _ in found]
                )
            elif not is_app_chain(chain, prefix) and chain != splits_chain(prefix):
                result[chain] = [rule_to_iptables(chain, text, self.family) for text, _ in found]
        for owner in owners:
            chain = f"{prefix}-{owner}"
            result[chain] = app_view(chain, self.owned(owner), [s for s in splits if s.owner == owner], order(owner))
            result[chain] += [foreign(chain, text) for text, _ in markers.get(owner, [])]  # not in this layout
        strays = [foreign(prefix, f"{e.map} element {e.port} : {e.value}") for e in self.elements if not e.comment]
        strays += [
            foreign(prefix, text)
            for text, _ in self.chains.get(splits_chain(prefix), [])
            if split_listed(text, self.family) is None
        ]
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


def _element(family: Family) -> re.Pattern[str]:
    return re.compile(rf'(\d+)(?: comment "([^"]*)")? : ((?:{family.address}) \. \d+|\d+)')


_ELEMENTS = {family: _element(family) for family in FAMILIES.values()}


def parse_listing(listing: str, family: Family = IP) -> Table:
    """`nft -a list table ip T` (or `get element`, or a table ip6): each chain's rules with their handles, each
    map's elements."""
    table = Table(family=family)
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
    for match in _ELEMENTS[table.family].finditer(text.removeprefix("elements = {")):
        table.elements.append(Element(name, int(match.group(1)), match.group(2) or "", match.group(3)))
