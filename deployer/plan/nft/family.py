"""The address family of a table: `table ip` for IPv4, `table ip6` for IPv6. The one place that knows the two.

The chains render the same iptables-restore text for both families, an instance's address in each DNAT target
(`[fd42:d0c::3]:8080` for IPv6, as ip6tables-save prints it); the table of each family holds it with its own
address type and address matches. Everything else (the maps by port, the chains, the comments) is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from deployer.errors import RulesError


@dataclass(frozen=True)
class Family:
    """nft's family name (also the keyword of its address matches: `ip saddr`, `ip6 saddr`), the type of an
    address in a map, the length of a whole address in bits, and the pattern of one address as both
    iptables-save and nft print it."""

    name: str
    address_type: str
    bits: int
    address: str
    cluster_key: str  # what a sticky split hashes, as nft writes it: the bytes xt_cluster hashes

    def destination_pattern(self) -> str:
        """The pattern of `destination`'s text in this family, the address and port as groups addr and to."""
        address = f"(?P<addr>{self.address})"
        return (rf"\[{address}\]" if self.bits == 128 else address) + r":(?P<to>\d+)"

    def instance(self) -> str:
        """The data type of a protocol map's elements: an instance's address and port."""
        return f"{self.address_type} . inet_service"

    def prefix_to_nft(self, network: str) -> str:
        """iptables-save's `-s 10.0.0.0/8` as nft writes it; nft prints a whole address (/32, /128) bare."""
        address, _, length = network.partition("/")
        return address if length == str(self.bits) else network

    def prefix_to_iptables(self, network: str) -> str:
        return network if "/" in network else f"{network}/{self.bits}"


# A sticky split hashes what xt_cluster hashes, so the cluster match of the iptables view means what the table
# does, and canary.cluster_node predicts it on both backends. xt_cluster hashes the connection's original source
# (a nat chain sees a flow's first packet, whose source that is) with jhash_1word for IPv4, and for IPv6 with
# jhash2(src, NF_CT_TUPLE_L3SIZE / sizeof(u32), seed): NF_CT_TUPLE_L3SIZE counts an address's 32-bit words (4),
# not its bytes, so that is one word, the address's first 32 bits. nft's jhash runs jhash over the bytes of its
# expression; over four bytes that is jhash_1word of them read as a little-endian word (both start from
# JHASH_INITVAL + 4 + seed, add the word, and finalise), as xt_cluster reads the __be32 on x86. So `jhash ip
# saddr` agrees for IPv4; `jhash ip6 saddr` (16 bytes) does not for IPv6, and `@nh,64,32` (the 32 bits at bit
# 64 of the IPv6 header: the source's first word) does. Checked on the kernel: test_canary.py (IPv4) and
# test_nftables_table.py (IPv6).
IP = Family("ip", "ipv4_addr", 32, r"\d+\.\d+\.\d+\.\d+", "ip saddr")
# As inet_ntop prints it, which both ip6tables-save and nft do: lower case, a run of zeros as `::`, the last 32
# bits dotted for an IPv4-mapped address.
IP6 = Family("ip6", "ipv6_addr", 128, r"[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){1,7}(?::\d+\.\d+\.\d+\.\d+)?", "@nh,64,32")
FAMILIES = {family.name: family for family in (IP, IP6)}


def family_of(name: str) -> Family:
    """The family of a table, by nft's name; RulesError for any other."""
    found = FAMILIES.get(name)
    if found is None:
        raise RulesError(f"the nftables backend writes a table of family ip or ip6, not {name!r}")
    return found


def destination(address: str, port: int | str) -> str:
    """An instance as a DNAT target, as iptables-save and nft print it: `172.18.0.3:80`, `[fd42:d0c::3]:8080`."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
