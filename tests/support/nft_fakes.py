"""Hand-written fakes of what the nftables backend drives: libnftables (a runner that records each transaction and
answers listings from a script) and the iptables adapter its filter and mangle text goes to."""

from __future__ import annotations

from deployer.errors import RulesError


class FakeRunner:
    def __init__(self, listings: dict[str, str] | None = None) -> None:
        self.listings = listings or {}  # `list table ip6 deployer` -> what it prints; absent: there is no table
        self.ran: list[str] = []
        self.refuse = False

    def run(self, text: str) -> str:
        self.ran.append(text)
        if text.startswith("list "):
            if text not in self.listings:
                raise RulesError("nft refused the transaction: Error: No such file or directory")
            return self.listings[text]
        if self.refuse:
            raise RulesError("nft refused the transaction: Error: Could not process rule: No such file or directory")
        return ""


class FakeIptables:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ran: list[str] = []

    def restore(self, text: str) -> None:
        self.ran.append(f"{self.name} " + " | ".join(text.strip().splitlines()))
