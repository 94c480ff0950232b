"""An iptables-restore transaction played out on the table as read, and the nft commands that make its outcome.

The host layer renders iptables-restore text as ever, for both backends; this interpreter follows it line by
line as iptables-restore would, on the app chains' rules as the table holds them (elements.py), and writes only
the difference. A table of the layout before the maps is moved as each app is written (migrate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deployer.errors import RulesError
from deployer.plan.nft.elements import Element, Split, app_view, effective, render_replace, rule_of
from deployer.plan.nft.family import IP, Family
from deployer.plan.nft.forms import CANNOT, rule_to_nft
from deployer.plan.nft.layout import (
    BASE_CHAINS,
    Key,
    base_declarations,
    dispatch_rules,
    is_app_chain,
    map_declarations,
    splits_chain,
)
from deployer.plan.nft.listing import Table
from deployer.plan.nft.migrate import kept_jumps, settle_chain


def app_chains_only(text: str, prefix: str) -> bool:
    """Whether a transaction writes app chains and nothing else (a flip, its tidy, an app's removal): what it
    needs to know is then those apps' elements, not the whole table."""
    nat = _nat_lines(text)
    return bool(nat) and all(is_app_chain(_chain_of(line), prefix) for line in nat)


def _chain_of(line: str) -> str:
    parts = line.split(" ")
    return parts[0][1:] if line.startswith(":") else parts[1] if len(parts) > 1 else ""


def touched_apps(text: str, prefix: str, family: Family = IP) -> dict[str, list[Key]]:
    """The apps whose chains a transaction writes, with the ports its rules name."""
    found: dict[str, list[Key]] = {}
    for line in _nat_lines(text):
        chain = _chain_of(line)
        if not is_app_chain(chain, prefix):
            continue
        keys = found.setdefault(chain[len(prefix) + 1 :], [])
        if line.startswith(("-A ", "-I ", "-D ")):
            body = line.split(" ", 3)[3] if line.startswith("-I ") else line.split(" ", 2)[2]
            keys.append(rule_of(chain, body, family).key)
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


@dataclass
class Played:
    """A restore's nat lines played out: the app chains as it leaves them, the other chains' commands, and
    what else it touches."""

    other: list[str] = field(default_factory=list)  # the other tables' lines, for iptables-restore
    chain_commands: list[str] = field(default_factory=list)  # the chains that are chains here, as nft commands
    apps: dict[str, list[str]] = field(default_factory=dict)  # app chain -> its rules, as the transaction leaves them
    deleted: set[str] = field(default_factory=set)  # app chains the transaction removes (-X)
    touches_base: bool = False
    declares_top: bool = False
    jumps: bool = False  # a jump to an app chain added: the lookups are wanted
    removes_table: bool = False


def play(text: str, table: str, prefix: str, live: Table, family: Family = IP) -> Played:
    """The transaction's lines in order, as iptables-restore would take them: each app chain on its rules as
    read (`-I` in front, `-A` behind, `-D`, a declared chain flushed), the other chains' lines as nft commands
    (a deletion by the handle read). RulesError for a line the backend cannot write."""
    played = Played()
    at = f"{family.name} {table}"
    section: str | None = None
    handles = {chain: list(found) for chain, found in live.chains.items()}

    def app_rules(chain: str) -> list[str]:
        if chain not in played.apps:
            owner = chain[len(prefix) + 1 :]
            played.apps[chain] = app_view(chain, live.owned(owner), live.owned_splits(prefix, owner), ())
        return played.apps[chain]

    for line in text.splitlines():
        if line.startswith("*"):
            section = line[1:]
            if section != "nat":
                played.other.append(line)
            continue
        if section != "nat":
            if section is not None:
                played.other.append(line)
            if line == "COMMIT":
                section = None
            continue
        if line == "COMMIT":
            section = None
        elif line.startswith(":"):
            chain = line[1:].split(" ", 1)[0]
            if chain in BASE_CHAINS:
                played.touches_base = True
            elif is_app_chain(chain, prefix):
                app_rules(chain).clear()  # declaring a chain in a restore flushes it
            elif chain == prefix:
                played.declares_top = True
            else:
                played.chain_commands += [f"add chain {at} {chain}", f"flush chain {at} {chain}"]
        elif line.startswith(("-A ", "-I ", "-D ")):
            verb, chain, rest = line.split(" ", 2)
            if verb == "-I":
                position, _, rest = rest.partition(" ")
                if position != "1":
                    raise RulesError("the nftables backend inserts at the top of a chain only", rules=line)
            if is_app_chain(chain, prefix):
                found = app_rules(chain)
                rule_of(chain, rest, family)  # refused now if it cannot be written
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
                # a jump is the lookups; a deleted one goes with the app's rules
                played.jumps = played.jumps or verb != "-D"
            else:
                played.touches_base = played.touches_base or chain in BASE_CHAINS
                if verb == "-I":
                    played.chain_commands.append(f"insert rule {at} {chain} {rule_to_nft(rest, family)}")
                elif verb == "-A":
                    played.chain_commands.append(f"add rule {at} {chain} {rule_to_nft(rest, family)}")
                else:
                    wanted = rule_to_nft(rest, family)
                    index = next(
                        (i for i, (found_text, _) in enumerate(handles.get(chain, [])) if found_text == wanted), None
                    )
                    if index is None:
                        raise RulesError("no such rule to delete", rules=line)
                    handle = handles[chain].pop(index)[1]
                    played.chain_commands.append(f"delete rule {at} {chain} handle {handle}")
        elif line.startswith("-F "):
            chain = line[3:]
            if is_app_chain(chain, prefix):
                app_rules(chain).clear()
            elif chain != prefix:
                played.chain_commands.append(f"flush chain {at} {chain}")
        elif line.startswith("-X "):
            chain = line[3:]
            if is_app_chain(chain, prefix):
                app_rules(chain).clear()
                played.deleted.add(chain)
            elif chain == prefix:
                played.removes_table = True
            else:
                played.chain_commands.append(f"delete chain {at} {chain}")
        elif line.strip() and not line.startswith("#"):
            raise RulesError("the nftables backend cannot apply this line", rules=line)
    return played


def translate_restore(
    text: str, table: str, prefix: str, live: Table, *, whole: bool = True, family: Family = IP
) -> Translation:
    """An iptables-restore --noflush transaction, translated.

    `live` is the table as read: whole, or (`whole=False`, for a transaction that writes app chains alone)
    the written apps' elements, whatever else holds the ports it names, and the splits chain. Each app chain
    the text writes is played out on its rules as read, line by line as iptables-restore would; the outcome
    becomes elements and splits (`effective`), and only the difference is written: elements replaced, the
    splits chain rewritten whole when a split changed. The other chains' lines become rules, a deletion by the
    handle read. filter and mangle stay iptables'. `family`: the table's, ip or ip6 (family.py); `live` is one
    of the same family.
    """
    played = play(text, table, prefix, live, family)
    apps = played.apps
    others = "\n".join([*played.other, ""]) if played.other else ""
    if played.removes_table:  # the teardown: everything the deployer owns in nat is this table
        return Translation(
            f"delete table {family.name} {table}\n" if live.chains or live.maps else "", others, {}, True
        )

    result: dict[str, tuple[list[Element], list[Split]]] = {}
    before: list[Element] = []
    after: list[Element] = []
    splits_before = live.splits(prefix)
    splits_after = [found for found in splits_before if f"{prefix}-{found.owner}" not in apps]
    markers: dict[str, bool] = {}
    for chain, found in apps.items():
        app = chain[len(prefix) + 1 :]
        result[app] = effective(chain, found, family)
        before += live.owned(app)
        after += result[app][0]
        splits_after += result[app][1]
        markers[app] = not result[app][0] and not result[app][1] and chain not in played.deleted
    taken = {e.key: e.owner for e in live.elements if e not in before}
    for e in after:
        if e.key in taken and e not in before:
            raise RulesError(
                f"port {e.port}/{e.key[0]} is already in the nftables maps, for "
                f"{taken[e.key] or 'a rule not of the deployer'}",
                rules=e.rule(f"{prefix}-{e.owner}"),
            )
    elements = render_replace(table, before, after, family)
    splits_changed = splits_after != splits_before
    wants_lookups = played.jumps or elements is not None or splits_changed or apps
    rewrite_dispatch = whole and (played.declares_top or (wants_lookups and not live.dispatching(prefix)))
    marker_commands: list[str] = []
    for chain in apps:
        kept = markers[chain[len(prefix) + 1 :]]
        if chain in live.chains:  # an app's empty chain, or one of the old layout
            marker_commands += settle_chain(
                table, prefix, chain, live.chains, kept=kept, unjump=not rewrite_dispatch, family=family
            )
        elif kept:
            marker_commands.append(f"add chain {family.name} {table} {chain}")
    old_jumps = kept_jumps(live.chains, prefix, apps)

    nat: list[str] = []
    if whole and played.touches_base:
        nat += base_declarations(table, family)
    if rewrite_dispatch or (whole and (elements or marker_commands)):
        nat += map_declarations(table, family)[0 if not nat else 1 :]
    if rewrite_dispatch:
        nat += dispatch_rules(table, prefix, old_jumps, family)
    nat += played.chain_commands
    if elements:
        nat.append(elements.rstrip("\n"))
    if splits_changed:
        nat += [
            f"flush chain {family.name} {table} {splits_chain(prefix)}",
            *(f"add rule {family.name} {table} {splits_chain(prefix)} {found.nft}" for found in splits_after),
        ]
    nat += marker_commands
    if not (elements or splits_changed or marker_commands or played.chain_commands or rewrite_dispatch):
        nat = []
    ready = whole and (rewrite_dispatch or live.dispatching(prefix)) and not old_jumps
    return Translation("\n".join([*nat, ""]) if nat else "", others, result, ready=ready, markers=markers)
