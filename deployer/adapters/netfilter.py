"""iptables, conntrack and the few sysctls the rules depend on."""

from __future__ import annotations

import re
from pathlib import Path

import sh

from deployer.errors import ConntrackError, RulesError
from deployer.plan.rules import parse_chain_listing

_DELETED = re.compile(r"(\d+) flow entries have been (deleted|shown)")


class Netfilter:
    def __init__(self, *, wait_seconds: int = 10, proc_sys: Path = Path("/proc/sys")) -> None:
        self.wait_seconds = wait_seconds
        self.proc_sys = proc_sys

    def save_nat(self) -> str:
        try:
            return str(_command("iptables-save")("-t", "nat"))
        except sh.ErrorReturnCode as exc:
            raise RulesError(f"iptables-save failed: {_stderr(exc)}") from None
        except sh.CommandNotFound:
            raise RulesError("iptables-save is not installed") from None

    def save_table(self, table: str) -> str:
        """`iptables-save -t TABLE`: filter and mangle hold the forwarding chains (see forwarding.py)."""
        try:
            return str(_command("iptables-save")("-t", table))
        except sh.ErrorReturnCode as exc:
            raise RulesError(f"iptables-save -t {table} failed: {_stderr(exc)}") from None
        except sh.CommandNotFound:
            raise RulesError("iptables-save is not installed") from None

    def list_chain(self, chain: str) -> list[str] | None:
        """One nat chain's rules as saved, or None when it does not exist; costs the same for any table size."""
        try:
            listing = str(_command("iptables")("-w", str(self.wait_seconds), "-t", "nat", "-S", chain))
        except sh.ErrorReturnCode as exc:
            # The nft backend says "incompatible" for a chain that is not there.
            if any(word in _stderr(exc) for word in ("No chain", "does not exist", "incompatible")):
                return None
            raise RulesError(f"iptables -S {chain} failed: {_stderr(exc)}") from None
        except sh.CommandNotFound:
            raise RulesError("iptables is not installed") from None
        return parse_chain_listing(listing, chain)

    def restore(self, text: str) -> None:
        """Apply one transaction; iptables-restore applies all of it or nothing."""
        try:
            _command("iptables-restore")("-w", str(self.wait_seconds), "--noflush", _in=text)
        except sh.ErrorReturnCode as exc:
            excerpt = "\n".join(text.splitlines()[:12])
            raise RulesError(f"iptables-restore refused the transaction: {_stderr(exc)}", rules=excerpt) from None
        except sh.CommandNotFound:
            raise RulesError("iptables-restore is not installed") from None

    def conntrack_delete(self, arguments: list[str]) -> int:
        """Delete the entries matching a filter; return how many went."""
        return self._conntrack(["-D", *arguments])[0]

    def conntrack_list(self, arguments: list[str]) -> list[str]:
        return self._conntrack(["-L", *arguments])[1]

    def _conntrack(self, arguments: list[str]) -> tuple[int, list[str]]:
        try:
            result = _command("conntrack")(*arguments, _ok_code=[0, 1], _return_cmd=True)
        except sh.ErrorReturnCode as exc:
            raise ConntrackError(f"conntrack {' '.join(arguments)} failed: {_stderr(exc)}") from None
        except sh.CommandNotFound:
            raise ConntrackError("conntrack is not installed") from None
        stderr = result.stderr.decode("utf-8", "replace")
        match = _DELETED.search(stderr)
        if result.exit_code == 1 and not match:
            raise ConntrackError(f"conntrack {' '.join(arguments)} failed: {stderr.strip()}")
        lines = [line for line in str(result).splitlines() if line.strip()]
        return (int(match.group(1)) if match else 0), lines

    def enable_route_localnet(self, interface: str) -> None:
        """Let packets from 127.0.0.1 that were DNATed to a container leave through its bridge."""
        self._write_sysctl(f"net/ipv4/conf/{interface}/route_localnet", "1")

    def conntrack_timeout(self, name: str) -> int | None:
        """One of the kernel's conntrack timeouts in seconds (e.g. nf_conntrack_tcp_timeout_time_wait), if readable."""
        try:
            return int((self.proc_sys / "net/netfilter" / name).read_text().strip())
        except (OSError, ValueError):
            return None

    def _write_sysctl(self, key: str, value: str) -> None:
        path = self.proc_sys / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as exc:
            raise RulesError(f"cannot set {key.replace('/', '.')}={value}: {exc.strerror}") from None


def _command(name: str) -> sh.Command:
    # No pseudo-terminal: these tools print plain text, and a pty costs milliseconds per call.
    return sh.Command(name).bake(_tty_out=False)


def _stderr(exc: sh.ErrorReturnCode) -> str:
    return " ".join(exc.stderr.decode("utf-8", "replace").split())[:500] or f"exit code {exc.exit_code}"
