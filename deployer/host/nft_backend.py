"""The nftables backend: the deployer's nat rules in its own nftables table, one transaction a flip, in process.

It stands behind the same `NetfilterBackend` seam as iptables: the chains render iptables-restore text and read
iptables-save lines as ever, and this backend translates both ways (deployer/plan/nft.py), so a flip, reconcile
and drift detection are the same code on either backend. The nat table is the only one it owns; filter and
mangle (the forwarding's accept rules, the watchdog's and the cluster's chains), conntrack and the sysctls stay
with the iptables adapter it is given.
"""

from __future__ import annotations

from typing import Protocol

from deployer.errors import RulesError
from deployer.host.chains import NetfilterBackend
from deployer.plan import nft


class NftRunner(Protocol):
    """libnftables: run one transaction, return what it printed (listings with their handles)."""

    def run(self, text: str) -> str: ...


class NftablesBackend:
    def __init__(self, runner: NftRunner, iptables: NetfilterBackend, *, table: str) -> None:
        self.runner = runner
        self.iptables = iptables
        self.table = table

    def listing(self, what: str = "") -> nft.Listing:
        """The table (or one chain: `chain ip TABLE NAME`) as it is now; empty when it does not exist.

        Without libnftables there is no table the deployer wrote: an iptables host that never ran this backend
        reads it as empty (its reconcile and uninstall look here too), and a write says what is missing."""
        try:
            return nft.parse_listing(self.runner.run(f"list {what or f'table ip {self.table}'}"))
        except RulesError as exc:
            if "No such file or directory" in str(exc) or "is not installed" in str(exc):
                return nft.Listing({})
            raise

    def save_table(self, table: str) -> str:
        if table != "nat":
            return self.iptables.save_table(table)
        return self.listing().saved()

    def list_chain(self, chain: str) -> list[str] | None:
        return self.listing(f"chain ip {self.table} {chain}").rules(chain)  # None: no such chain

    def restore(self, text: str) -> None:
        """The nat part as one nft transaction, the rest through iptables-restore; both translated first, so a
        rule the backend cannot write changes nothing."""
        live = self.listing() if any(line.startswith("-D ") for line in text.splitlines()) else None
        nat, other = nft.translate_restore(text, self.table, live)
        if other:
            self.iptables.restore(other)
        if nat:
            self.runner.run(nat)

    def conntrack_delete(self, arguments: list[str]) -> int:
        return self.iptables.conntrack_delete(arguments)

    def conntrack_list(self, arguments: list[str]) -> list[str]:
        return self.iptables.conntrack_list(arguments)

    def conntrack_timeout(self, name: str) -> int | None:
        return self.iptables.conntrack_timeout(name)

    def enable_route_localnet(self, interface: str) -> None:
        self.iptables.enable_route_localnet(interface)
