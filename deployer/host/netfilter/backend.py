"""The seam between the chains and netfilter: what a backend must do, and where each one lives.

`Chains` (chains.py) renders iptables-restore text and reads iptables-save lines, on either backend; a backend
only saves, lists, restores and talks to conntrack. `[deployer] backend` picks one, and deployer/wiring.py
builds it:

- iptables: `Netfilter` in deployer/adapters/iptables.py, the adapter itself, with no host-side code. An
  iptables-restore --noflush is already the transaction: it applies the whole text or nothing, and
  iptables-save reads the table back as it is, so there is nothing to keep between two calls.
- IPv6: a second backend of the same kind for the family's own table (ip6tables, or `table ip6`), which the
  chains give the same text with IPv6 addresses (plan/rules.for_ipv6).
- nftables: `NftablesBackend` in host/netfilter/nftables.py, over the libnftables adapter
  (deployer/adapters/nftables.py). It translates the same text into its own table (plan/nft/), and keeps a
  picture of that table between commits, so a flip reads nothing from the kernel; keeping and checking that
  picture is a decision, so it lives here, not in an adapter.

A test's fake stands in the same place.
"""

from __future__ import annotations

from typing import Protocol


class NetfilterBackend(Protocol):
    """What the chains need of netfilter: save a table, list one chain, restore a transaction, conntrack."""

    def save_table(self, table: str) -> str: ...
    def list_chain(self, chain: str) -> list[str] | None: ...
    def restore(self, text: str) -> None: ...
    def conntrack_delete(self, arguments: list[str]) -> int: ...
    def conntrack_list(self, arguments: list[str]) -> list[str]: ...
    def conntrack_timeout(self, name: str) -> int | None: ...
    def enable_route_localnet(self, interface: str) -> None: ...


class BridgeNetwork(Protocol):
    """The Docker network whose bridge the loopback masquerade names; on a dual-stack host, who knows each
    instance's IPv6 address."""

    def ensure_network(
        self, name: str, bridge: str, ipv6_subnet: str | None = None, *, ipv6_required: bool = True
    ) -> None: ...
    def addresses6(self, name: str) -> dict[str, str]: ...
