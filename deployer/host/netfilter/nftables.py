"""The nftables backend: the deployer's nat rules in its own nftables table, one transaction a change, in process.

It stands behind the same `NetfilterBackend` seam as iptables: the chains render iptables-restore text and read
iptables-save lines as ever, and this backend translates both ways (deployer/plan/nft/), so a flip, reconcile
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

Dual stack: one backend per family (`family="ip"`, `table ip deployer`; `family="ip6"`, `table ip6 deployer`),
each with its own picture and generation file, under the one netfilter lock. The chains render the same text
for both; `restore_pair` writes both tables in one nft transaction, so a flip never leaves the two families on
different instances: nft commits a command buffer whole or not at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from deployer.errors import RulesError
from deployer.host.netfilter.backend import NetfilterBackend
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
        """The next count, written in place (a rename costs a flip a third of a millisecond here; writers and the
        flips that trust the count hold the netfilter lock); None when there is no file to keep it in. After a
        count that could not be read, one no process can have seen: the clock's nanoseconds."""
        if self.path is None:
            return None
        value = seen + 1 if seen is not None else time.time_ns()
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


@dataclass
class Picture:
    """What the backend keeps of its table between transactions: the elements by app and by port, the splits,
    the apps' empty chains; `ready`: the lookups are in place and nothing of the old layout is left, so a
    transaction of app chains needs nothing else."""

    generation: int | None
    ready: bool
    elements: dict[str, list[nft.Element]] = field(default_factory=dict)
    by_key: dict[nft.Key, list[nft.Element]] = field(default_factory=dict)
    splits: list[nft.Split] = field(default_factory=list)
    markers: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, table: nft.Table, prefix: str, generation: int | None) -> Picture:
        picture = cls(
            generation,
            table.dispatching(prefix, exact=True),
            splits=table.splits(prefix),
            markers={chain[len(prefix) + 1 :] for chain in table.chains if nft.is_app_chain(chain, prefix)},
        )
        for found in table.elements:
            picture.elements.setdefault(found.owner, []).append(found)
            picture.by_key.setdefault(found.key, []).append(found)
        return picture

    def rules(self, prefix: str, app: str, order: Sequence[nft.Key]) -> list[str] | None:
        """The app's chain as iptables-save lines; None when it has no chain."""
        chain = f"{prefix}-{app}"
        found = nft.app_view(chain, self.elements.get(app, []), [s for s in self.splits if s.owner == app], order)
        return found or ([] if app in self.markers else None)

    def table_for(self, prefix: str, touched: dict[str, list[nft.Key]], family: nft.Family) -> nft.Table:
        """What a transaction of these apps' chains is planned from: their elements, any other on the ports it
        names, the splits chain, their empty chains."""
        elements = [e for app in touched for e in self.elements.get(app, [])]
        keys = {key for named in touched.values() for key in named}
        elements += [e for key in keys for e in self.by_key.get(key, []) if e.owner not in touched]
        chains: dict[str, list[tuple[str, int]]] = {nft.splits_chain(prefix): [(s.nft, 0) for s in self.splits]}
        chains.update({f"{prefix}-{app}": [] for app in touched if app in self.markers})
        return nft.Table(chains=chains, elements=elements, family=family)

    def apply(self, translation: nft.Translation, generation: int) -> None:
        """A committed transaction's outcome."""
        if translation.removes_table:
            self.elements, self.by_key, self.splits, self.markers, self.ready = {}, {}, [], set(), False
        for app, (elements, splits) in translation.apps.items():
            for gone in self.elements.pop(app, []):
                self.by_key[gone.key].remove(gone)
            self.elements[app] = elements
            for found in elements:
                self.by_key.setdefault(found.key, []).append(found)
            self.splits = [s for s in self.splits if s.owner != app] + splits
        for app, marked in translation.markers.items():
            (self.markers.add if marked else self.markers.discard)(app)
        self.ready = self.ready or translation.ready
        self.generation = generation


class NftablesBackend:
    def __init__(
        self,
        runner: NftRunner,
        iptables: NetfilterBackend,
        *,
        table: str,
        prefix: str,
        reader: NftRunner | None = None,
        generation: Path | None = None,
        ports: Callable[[str], Sequence[nft.Key]] = lambda app: (),
        family: str = "ip",
    ) -> None:
        self.runner = runner  # writes only
        self.reader = reader or runner
        self.iptables = iptables
        self.family = nft.family_of(family)  # the table's: ip or ip6
        self.table = table
        self.prefix = prefix
        self.ports = ports  # an app's ports from the config, in the order its rules are rendered
        self.generation = Generation(generation)
        self.picture: Picture | None = None  # as last read or written

    def listing(self) -> nft.Table:
        """The whole table as it is now, read; empty when it does not exist.

        Without libnftables there is no table the deployer wrote: an iptables host that never ran this backend
        reads it as empty (its reconcile and uninstall look here too), and a write says what is missing."""
        seen = self.generation.read()
        try:
            table = nft.parse_listing(self.reader.run(f"list table {self.family.name} {self.table}"), self.family)
        except RulesError as exc:
            if "No such file or directory" in str(exc) or "is not installed" in str(exc):
                table = nft.Table(family=self.family)
            else:
                raise
        self.picture = Picture.of(table, self.prefix, seen)
        return table

    def _picture(self) -> Picture:
        """What the table holds: as kept, when no other process has written since; else read."""
        if self.picture is None or self.picture.generation is None or self.picture.generation != self.generation.read():
            self.listing()
        assert self.picture is not None
        return self.picture

    def save_table(self, table: str) -> str:
        if table != "nat":
            return self.iptables.save_table(table)
        return self.listing().saved(self.prefix, self.ports)

    def list_chain(self, chain: str) -> list[str] | None:
        """One chain as iptables-save lines; None when it does not exist."""
        if nft.is_app_chain(chain, self.prefix):
            app = chain[len(self.prefix) + 1 :]
            return self._picture().rules(self.prefix, app, self.ports(app))
        return self.listing().view(self.prefix, self.ports).get(chain)

    def restore(self, text: str) -> None:
        """The nat part as one nft transaction, the rest through iptables-restore; both translated first, so a
        rule the backend cannot write changes nothing. A transaction of app chains alone (a flip) is planned
        from what is kept of the table; any other reads the table whole first."""
        translation = self.translate(text)
        if translation.other:
            self.iptables.restore(translation.other)
        if translation.nat:
            self._commit([(self, translation)])

    def restore_pair(self, text: str | None, other: NftablesBackend, other_text: str | None) -> None:
        """`text` in this backend's table and `other_text` in `other`'s (the other family's), in one nft
        transaction: both tables change, or neither does. Both are translated first, so a rule either cannot
        write changes nothing; their filter and mangle parts go through each one's iptables-restore, as
        `restore` does. An empty text (or None) leaves its table alone: the other's is a plain `restore`."""
        if not other_text:
            if text:
                self.restore(text)
            return
        if not text:
            other.restore(other_text)
            return
        if (other.family, other.table) == (self.family, self.table):
            raise RulesError(f"restore_pair writes two tables, and both are {self.family.name} {self.table}")
        mine, theirs = self.translate(text), other.translate(other_text)
        for backend, translation in ((self, mine), (other, theirs)):
            if translation.other:
                backend.iptables.restore(translation.other)
        written = [(backend, t) for backend, t in ((self, mine), (other, theirs)) if t.nat]
        if written:
            self._commit(written)

    def translate(self, text: str) -> nft.Translation:
        """A restore's text as this table's commands, planned from the picture for a flip, else from a read."""
        picture = self._picture() if nft.app_chains_only(text, self.prefix) else None
        if picture is not None and picture.ready:
            live = picture.table_for(self.prefix, nft.touched_apps(text, self.prefix, self.family), self.family)
            return nft.translate_restore(text, self.table, self.prefix, live, whole=False, family=self.family)
        live = self.listing() if nft.has_nat(text) else nft.Table(family=self.family)
        return nft.translate_restore(text, self.table, self.prefix, live, family=self.family)

    def _commit(self, written: Sequence[tuple[NftablesBackend, nft.Translation]]) -> None:
        """The translations' nat commands as one transaction, through this backend's runner, then each
        backend's picture and count moved on; a refusal leaves every picture to be read again."""
        # Each picture was made or checked against its count just now (by `_picture` or `listing`), under the
        # netfilter lock, so the count is the picture's: no second read of the file.
        counts = [
            backend.picture.generation if backend.picture is not None else backend.generation.read()
            for backend, _ in written
        ]
        pictures = [backend.picture for backend, _ in written]
        try:
            self.runner.run("".join(translation.nat for _, translation in written))
        except RulesError:
            for backend, _ in written:
                backend.picture = None  # what is there is to be read again
            raise
        for (backend, translation), picture, current in zip(written, pictures, counts, strict=True):
            counted = backend.generation.advance(current)
            if picture is not None and current is not None and counted is not None:
                picture.apply(translation, counted)
            else:
                backend.picture = None

    def conntrack_delete(self, arguments: list[str]) -> int:
        return self.iptables.conntrack_delete(arguments)

    def conntrack_list(self, arguments: list[str]) -> list[str]:
        return self.iptables.conntrack_list(arguments)

    def conntrack_timeout(self, name: str) -> int | None:
        return self.iptables.conntrack_timeout(name)

    def enable_route_localnet(self, interface: str) -> None:
        self.iptables.enable_route_localnet(interface)
