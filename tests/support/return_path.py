"""The old host's return-path rules as iptables-save (and ip6tables-save) prints them, for the forwarding tests."""

from __future__ import annotations

RESTORE = (
    "-m conntrack --ctdir REPLY -m connmark --mark 0x2000000/0x2000000 -j CONNMARK --restore-mark "
    "--nfmask 0x2000000 --ctmask 0x2000000"
)


def mark_rule(via: str) -> str:
    """The rule that marks new connections from the new host (MAC 52:54:00:ab:cd:ef on eth1); `via` in its comment."""
    return (
        "-A DEPLOYER-RETURN -i eth1 -m mac --mac-source 52:54:00:ab:cd:ef -m conntrack --ctstate NEW "
        f'-m comment --comment "deployer: forwarded by {via}" -j CONNMARK --set-xmark 0x2000000/0x2000000'
    )


def new_return_mangle(via: str) -> list[str]:
    """The mangle transaction of a new return path on eth1, in either family (the comment names `via`)."""
    return [
        "*mangle",
        ":DEPLOYER-RETURN - [0:0]",
        mark_rule(via),
        f"-A DEPLOYER-RETURN {RESTORE}",
        "-I PREROUTING 1 -j DEPLOYER-RETURN",
        ":DEPLOYER-RETURN-LOCAL - [0:0]",
        f"-A DEPLOYER-RETURN-LOCAL {RESTORE}",
        "-I OUTPUT 1 -j DEPLOYER-RETURN-LOCAL",
        "COMMIT",
    ]
