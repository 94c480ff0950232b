"""The move from the layout before the maps: one chain per app, jumped to from the top chain.

A table of that layout is moved app by app: each app's first write here adds its elements and removes its old
chain and its jump in one transaction, while the other apps' old chains stay in front of the lookups. Once
written, an app's chain is empty (kept, for an app with no rules) or gone, and never jumped to.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from deployer.plan.nft.family import IP, Family
from deployer.plan.nft.layout import is_app_chain

Listed = Sequence[tuple[str, int]]  # a chain's rules as read: (nft text, handle)


def legacy_jumps(chains: Mapping[str, Listed], prefix: str) -> list[tuple[str, int]]:
    """The top chain's jumps to app chains. They stay in front of the lookups until each app's first write here
    moves its rules into the maps."""
    return [
        (text, handle)
        for text, handle in chains.get(prefix, [])
        if text.startswith(f"jump {prefix}-") and is_app_chain(text.removeprefix("jump "), prefix)
    ]


def kept_jumps(chains: Mapping[str, Listed], prefix: str, written: Collection[str]) -> list[str]:
    """The jumps to the old chains of apps a transaction does not write: a rewritten top chain keeps them."""
    return [text for text, _ in legacy_jumps(chains, prefix) if text.removeprefix("jump ") not in written]


def settle_chain(
    table: str,
    prefix: str,
    chain: str,
    chains: Mapping[str, Listed],
    *,
    kept: bool,
    unjump: bool,
    family: Family = IP,
) -> list[str]:
    """An app chain the table holds, once the transaction has written its app: an empty chain of an app with no
    rules, or a chain of the old layout. Its rules go, and the chain too unless `kept` (the app has no rules
    now); `unjump`: its jump from the top chain is deleted by handle (else the top chain is rewritten without it).
    """
    at = f"{family.name} {table}"
    commands = []
    if unjump:
        commands += [
            f"delete rule {at} {prefix} handle {handle}"
            for text, handle in legacy_jumps(chains, prefix)
            if text == f"jump {chain}"
        ]
    if chains[chain] or not kept:
        commands.append(f"flush chain {at} {chain}")
    if not kept:
        commands.append(f"delete chain {at} {chain}")
    return commands
