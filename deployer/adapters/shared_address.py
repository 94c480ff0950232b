"""The shared address on this host: the /32 on the interface, the multicast MAC joined, ARP answered with it; on a
dual-stack host the shared IPv6 address too, as a /128 without duplicate address detection (every host holds it).

Every step checks first and changes only what differs.
"""

from __future__ import annotations

import json
import subprocess

from deployer.errors import ClusterError


class SharedAddress:
    def join(self, interface: str, address: str, mac: str, *, arp_mangle: bool, address6: str | None = None) -> None:
        _run(["ip", "addr", "replace", f"{address}/32", "dev", interface])
        if address6 is not None:
            # nodad: with duplicate address detection, the second host to add it would find the first and leave
            # it "dadfailed", unusable.
            _run(["ip", "-6", "addr", "replace", f"{address6}/128", "dev", interface, "nodad"])
        if mac not in _run(["ip", "maddr", "show", "dev", interface]):
            _run(["ip", "maddr", "add", mac, "dev", interface])
        if arp_mangle:
            rule = ["OUTPUT", "-s", address, "-j", "mangle", "--mangle-mac-s", mac]
            if f"-s {address} --mangle-mac-s {mac}" not in _run(["arptables", "-S", "OUTPUT"]):
                _run(["arptables", "-A", *rule])

    def own_mac(self, interface: str) -> str:
        """The interface's own MAC: the IPv6 neighbour discovery rewrite depends on it."""
        try:
            return str(json.loads(_run(["ip", "-j", "link", "show", "dev", interface]))[0]["address"])
        except (ValueError, LookupError, TypeError):
            raise ClusterError(f"cannot read the MAC address of {interface}") from None

    def part(self, interface: str, address: str, mac: str, *, address6: str | None = None) -> None:
        """Take the addresses, the MAC and the ARP rule off this host (at uninstall, or a test's end)."""
        listing = _run(["arptables", "-S", "OUTPUT"], check=False)
        if f"-s {address} --mangle-mac-s {mac}" in listing:
            _run(["arptables", "-D", "OUTPUT", "-s", address, "-j", "mangle", "--mangle-mac-s", mac], check=False)
        _run(["ip", "maddr", "del", mac, "dev", interface], check=False)
        _run(["ip", "addr", "del", f"{address}/32", "dev", interface], check=False)
        if address6 is not None:
            _run(["ip", "-6", "addr", "del", f"{address6}/128", "dev", interface], check=False)


def _run(command: list[str], *, check: bool = True) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise ClusterError(f"{command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{' '.join(command)} did not finish in 10 s") from None
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(command)} failed: {' '.join(result.stderr.split())[:300]}")
    return result.stdout
