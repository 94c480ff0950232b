"""The nftables backend: the deployer's nat rules in its own nftables table, one transaction a change, in process.

It stands behind the same `NetfilterBackend` seam as iptables: the chains render iptables-restore text and read
iptables-save lines as ever, and this backend translates both ways (deployer/plan/nft.py), so a flip, reconcile
and drift detection are the same code on either backend. The nat table is the only one it owns; filter and
mangle (the forwarding's accept rules, the watchdog's and the cluster's chains), conntrack and the sysctls stay
with the iptables adapter it is given.

Why a flip reads nothing from the kernel: nft fetches a whole map's elements before any read of it, after each
change (30 ms with 10,000 elements here), and a context that has read them fetches them again before its next
write (17 ms). So the backend keeps what the table holds, by app, from its last whole read and its own commits,
and writes through a context that never reads. What it keeps is good while the generation file says no other
deployer process has written since; all of them write under the netfilter lock and count their commits there.
A change made by hand is seen at the next whole read (reconcile, status). A flip planned from a stale picture
cannot make a wrong table either: nft refuses the whole transaction when a key it deletes is gone or one it
adds is taken, and a changed value is replaced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Protocol, Sequence

from deployer.errors import RulesError
from deployer.host.chains import NetfilterBackend
from deployer.plan import nft


class NftRunner(Protocol):
    """libnftables: run one transaction, return what it printed (listings with their handles)."""

    def run(self, text: str) -> str: ...


class Generation:
    """A count of the commits to the table, in a file beside the netfilter lock, so a process can tell
    whether what it keeps of the table is still what is there. None: no file, or not one this wrote."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def read(self) -> int | None:
        """The count; 0 before the first commit; None without a file to keep it, or one that is not a count
        (a planted link is not followed)."""
        if self.path is None:
            return None
        try:
            descriptor = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return 0
        except OSError:
            return None
        try:
            text = os.read(descriptor, 32).decode("ascii", "replace")
        finally:
            os.close(descriptor)
        return int(text) if text.isdigit() else None

    def advance(self, seen: int | None) -> int | None:
        """The next count, written in place (a rename costs a flip a third of a millisecond here); None when
        there is no file to keep it in. A read torn by a write reads as no count, and the table is read."""
        if self.path is None:
            return None
        value = (seen or 0) + 1
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            os.pwrite(descriptor, f"{value:020d}".encode(), 0)
        except OSError:
            return None
        finally:
            os.close(descriptor)
        return value


class NftablesBackend:
    def __init__(self, runner: NftRunner, iptables: NetfilterBackend, *, table: str, prefix: str,
                 reader: NftRunner | None = None, generation: Path | None = None,
                 ports: Callable[[str], Sequence[nft.Key]] = lambda app: ()) -> None:
        self.runner = runner  # writes only
        self.reader = reader or runner
        self.iptables = iptables
        self.table = table
        self.prefix = prefix
        self.ports = ports  # an app's ports from the config, in the order its rules are rendered
        self.generation = Generation(generation)
        self.kept: dict[str, list[nft.Element]] | None = None  # owner -> its elements, as last read or written
        self.kept_at: int | None = None
        self.kept_keys: dict[nft.Key, list[nft.Element]] = {}  # the same elements, by port
        self.kept_markers: set[str] = set()  # apps with no rules, whose empty chain is there
        self.kept_maps = False  # whether the maps were there: a transaction from what is kept only fills them

    def listing(self) -> nft.Table:
        """The whole table as it is now, read; empty when it does not exist.

        Without libnftables there is no table the deployer wrote: an iptables host that never ran this backend
        reads it as empty (its reconcile and uninstall look here too), and a write says what is missing."""
        seen = self.generation.read()
        try:
            table = nft.parse_listing(self.reader.run(f"list table ip {self.table}"))
        except RulesError as exc:
            if "No such file or directory" in str(exc) or "is not installed" in str(exc):
                table = nft.Table()
            else:
                raise
        self.kept, self.kept_at, self.kept_maps = {}, seen, set(nft.MAP_TYPES) <= table.maps
        self.kept_keys = {}
        self.kept_markers = {chain[len(self.prefix) + 1:] for chain in table.chains
                             if nft.is_app_chain(chain, self.prefix)}
        for found in table.elements:
            self.kept.setdefault(found.owner, []).append(found)
            self.kept_keys.setdefault(found.key, []).append(found)
        return table

    def _keep(self, app: str, elements: list[nft.Element]) -> None:
        assert self.kept is not None
        for gone in self.kept.pop(app, []):
            self.kept_keys[gone.key].remove(gone)
        self.kept[app] = elements
        for found in elements:
            self.kept_keys.setdefault(found.key, []).append(found)

    def _kept(self) -> dict[str, list[nft.Element]]:
        """What the table holds by app: as kept, when no other process has written since; else read."""
        if self.kept is None or self.kept_at is None or self.kept_at != self.generation.read():
            self.listing()
        assert self.kept is not None
        return self.kept

    def save_table(self, table: str) -> str:
        if table != "nat":
            return self.iptables.save_table(table)
        return self.listing().saved(self.prefix, self.ports)

    def list_chain(self, chain: str) -> list[str] | None:
        """One chain as iptables-save lines; None when it does not exist."""
        if nft.is_app_chain(chain, self.prefix):
            app = chain[len(self.prefix) + 1:]
            found = nft.ordered(self._kept().get(app, []), self.ports(app))
            return [e.rule(chain) for e in found] or ([] if app in self.kept_markers else None)
        return self.listing().view(self.prefix, self.ports).get(chain)

    def restore(self, text: str) -> None:
        """The nat part as one nft transaction, the rest through iptables-restore; both translated first, so a
        rule the backend cannot write changes nothing. A transaction of app chains alone (a flip) is planned
        from what is kept of the table; any other reads the table whole first."""
        kept = self._kept() if nft.app_chains_only(text, self.prefix) else None
        if kept is not None and self.kept_maps:
            touched = nft.touched_apps(text, self.prefix)
            keys = {key for named in touched.values() for key in named}
            elements = [e for app in touched for e in kept.get(app, [])]
            elements += [e for key in keys for e in self.kept_keys.get(key, []) if e.owner not in touched]
            markers = {f"{self.prefix}-{app}": [] for app in touched if app in self.kept_markers}
            translation = nft.translate_restore(text, self.table, self.prefix,
                                                nft.Table(chains=markers, elements=elements), whole=False)
        else:
            translation = nft.translate_restore(text, self.table, self.prefix,
                                                self.listing() if nft.has_nat(text) else nft.Table())
        if translation.other:
            self.iptables.restore(translation.other)
        if not translation.nat:
            return
        current = self.generation.read()
        valid = self.kept is not None and self.kept_at is not None and self.kept_at == current
        try:
            self.runner.run(translation.nat)
        except RulesError:
            self.kept = None  # what is there is to be read again
            raise
        counted = self.generation.advance(current)
        if valid and counted is not None and self.kept is not None:
            if translation.removes_table:
                self.kept, self.kept_keys, self.kept_maps, self.kept_markers = {}, {}, False, set()
            for app, marked in translation.markers.items():
                (self.kept_markers.add if marked else self.kept_markers.discard)(app)
            self.kept_maps = self.kept_maps or translation.declares_maps
            for app, found in translation.apps.items():
                self._keep(app, found)
            self.kept_at = counted
        else:
            self.kept = None

    def conntrack_delete(self, arguments: list[str]) -> int:
        return self.iptables.conntrack_delete(arguments)

    def conntrack_list(self, arguments: list[str]) -> list[str]:
        return self.iptables.conntrack_list(arguments)

    def conntrack_timeout(self, name: str) -> int | None:
        return self.iptables.conntrack_timeout(name)

    def enable_route_localnet(self, interface: str) -> None:
        self.iptables.enable_route_localnet(interface)
