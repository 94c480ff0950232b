"""iptables, conntrack and the few sysctls the rules depend on.

Every command here is on the hot path (a flip, reconcile, status, conntrack cleanup), so each is spawned
directly: `subprocess.run` with an argument list, no shell, no pseudo-terminal, pipes only. The `sh` package's
machinery (a pty, reader threads, its process wrapper) cost some 7 ms per call on top of a 3 to 4 ms
iptables-restore; it stays in adapters/routing.py, for the `ip` commands of forwards, where its conveniences
(baked commands, exit codes as exceptions) matter and a millisecond does not.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from deployer.errors import ConntrackError, DeployerError, RulesError
from deployer.plan.rules import parse_chain_listing

_DELETED = re.compile(r"(\d+) flow entries have been (deleted|shown)")


class Netfilter:
    """iptables for IPv4, or with `ipv6=True` ip6tables (the same commands and text, the other family's tables);
    conntrack reads IPv4 unless a filter says `-f ipv6`."""

    def __init__(self, *, wait_seconds: int = 10, proc_sys: Path = Path("/proc/sys"), ipv6: bool = False) -> None:
        self.wait_seconds = wait_seconds
        self.proc_sys = proc_sys
        self.command = "ip6tables" if ipv6 else "iptables"

    def save_nat(self) -> str:
        return self.save_table("nat")

    def save_table(self, table: str) -> str:
        """`iptables-save -t TABLE`: filter and mangle hold the forwarding chains (see forwarding.py)."""
        result = _run([f"{self.command}-save", "-t", table], RulesError)
        if result.returncode != 0:
            raise RulesError(f"{self.command}-save -t {table} failed: {_stderr(result)}")
        return result.stdout

    def list_chain(self, chain: str) -> list[str] | None:
        """One nat chain's rules as saved, or None when it does not exist; costs the same for any table size."""
        result = _run([self.command, "-w", str(self.wait_seconds), "-t", "nat", "-S", chain], RulesError)
        if result.returncode != 0:
            # The nft backend says "incompatible" for a chain that is not there.
            if any(word in _stderr(result) for word in ("No chain", "does not exist", "incompatible")):
                return None
            raise RulesError(f"{self.command} -S {chain} failed: {_stderr(result)}")
        return parse_chain_listing(result.stdout, chain)

    def restore(self, text: str) -> None:
        """Apply one transaction; iptables-restore applies all of it or nothing."""
        result = _run([f"{self.command}-restore", "-w", str(self.wait_seconds), "--noflush"], RulesError, text)
        if result.returncode != 0:
            excerpt = "\n".join(text.splitlines()[:12])
            raise RulesError(f"{self.command}-restore refused the transaction: {_stderr(result)}", rules=excerpt)

    def conntrack_delete(self, arguments: list[str]) -> int:
        """Delete the entries matching a filter; return how many went."""
        return self._conntrack(["-D", *arguments])[0]

    def conntrack_list(self, arguments: list[str]) -> list[str]:
        return self._conntrack(["-L", *arguments])[1]

    def _conntrack(self, arguments: list[str]) -> tuple[int, list[str]]:
        result = _run(["conntrack", *arguments], ConntrackError)
        match = _DELETED.search(result.stderr)
        # conntrack exits 1 when nothing matched, and says so ("0 flow entries ..."): that is not a failure.
        if result.returncode not in (0, 1) or (result.returncode == 1 and not match):
            raise ConntrackError(f"conntrack {' '.join(arguments)} failed: {_stderr(result)}")
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        return (int(match.group(1)) if match else 0), lines

    def enable_route_localnet(self, interface: str) -> None:
        """Let packets from 127.0.0.1 that were DNATed to a container leave through its bridge."""
        self._write_sysctl(f"net/ipv4/conf/{interface}/route_localnet", "1")

    def disable_tcp_loose(self) -> None:
        """nf_conntrack_tcp_loose=0: a mid-stream segment of a connection this host never saw open is invalid,
        so a cluster host never picks up a connection another host took in (deployer/plan/cluster.py)."""
        self._write_sysctl("net/netfilter/nf_conntrack_tcp_loose", "0")

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


def _run(
    argv: list[str],
    error: Callable[[str], DeployerError],
    text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Spawn one command directly, its input from `text`; a missing program is `error`, a failure is the caller's."""
    try:
        return subprocess.run(
            argv,
            input=text,
            stdin=None if text is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
    except FileNotFoundError:
        raise error(f"{argv[0]} is not installed") from None
    except OSError as exc:
        raise error(f"{argv[0]} could not start: {exc.strerror}") from None


def _stderr(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join(result.stderr.split())[:500] or f"exit code {result.returncode}"
