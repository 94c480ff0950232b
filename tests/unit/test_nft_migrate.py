"""The move from the layout before the maps (plan/nft/migrate.py): which old jumps stay, what written chains become."""

from __future__ import annotations

import pytest

from deployer.plan.nft.migrate import kept_jumps, legacy_jumps, settle_chain

TOP = [
    ("jump DEPLOYER-web", 7),
    ("jump DEPLOYER-SPLITS", 8),
    ("jump DEPLOYER-api", 9),
    ("dnat ip to tcp dport map @tcp-ports", 10),
]


def test_the_old_layout_is_the_top_chains_jumps_to_app_chains():
    assert legacy_jumps({"DEPLOYER": TOP}, "DEPLOYER") == [("jump DEPLOYER-web", 7), ("jump DEPLOYER-api", 9)]
    assert legacy_jumps({}, "DEPLOYER") == []


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        ((), ["jump DEPLOYER-web", "jump DEPLOYER-api"]),
        (("DEPLOYER-web",), ["jump DEPLOYER-api"]),
        (("DEPLOYER-web", "DEPLOYER-api"), []),
        (("DEPLOYER-db",), ["jump DEPLOYER-web", "jump DEPLOYER-api"]),
    ],
)
def test_a_rewritten_top_chain_keeps_the_jumps_to_apps_not_written(written, kept):
    assert kept_jumps({"DEPLOYER": TOP}, "DEPLOYER", written) == kept


OLD_RULE = [('tcp dport 80 dnat to 172.18.0.3:80 comment "web green v2"', 3)]


@pytest.mark.parametrize(
    ("rules", "kept", "unjump", "commands"),
    [  # an empty chain is unjumped; an old one jumped
        # an app's empty chain, and the app still has no rules: nothing to do
        ([], True, True, []),
        # an app's empty chain, and the app has rules now: the chain goes
        ([], False, True, ["flush chain ip deployer DEPLOYER-web", "delete chain ip deployer DEPLOYER-web"]),
        # a chain of the old layout, its rules now elements: its jump, its rules and the chain go
        (
            OLD_RULE,
            False,
            True,
            [
                "delete rule ip deployer DEPLOYER handle 7",
                "flush chain ip deployer DEPLOYER-web",
                "delete chain ip deployer DEPLOYER-web",
            ],
        ),
        # the same with the top chain rewritten whole: no jump to delete by handle
        (OLD_RULE, False, False, ["flush chain ip deployer DEPLOYER-web", "delete chain ip deployer DEPLOYER-web"]),
        # a chain of the old layout, and the app has no rules now: emptied and kept, unjumped
        (OLD_RULE, True, True, ["delete rule ip deployer DEPLOYER handle 7", "flush chain ip deployer DEPLOYER-web"]),
    ],
)
def test_a_written_apps_chain_is_emptied_and_kept_or_removed(rules, kept, unjump, commands):
    top = TOP if rules else [(text, handle) for text, handle in TOP if text != "jump DEPLOYER-web"]
    chains = {"DEPLOYER": top, "DEPLOYER-web": rules}
    assert settle_chain("deployer", "DEPLOYER", "DEPLOYER-web", chains, kept=kept, unjump=unjump) == commands
