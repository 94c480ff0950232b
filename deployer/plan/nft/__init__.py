"""The deployer's own nftables table, as nft's input language, and the iptables view of it; pure, like rules.py.

The nftables backend (host/netfilter/nftables.py) stands where iptables-restore does: the host layer renders
iptables-restore text and reads iptables-save lines as ever, and this package translates both ways. Its parts:

- family.py: ip or ip6, the table's address family: its address type and patterns, the one place that knows both;
- layout.py: the table (three maps keyed by port, a few chains), its names, the commands that declare it;
- forms.py: the rule forms of the table's chains, both ways; comments as nft takes them;
- elements.py: an app chain's rules as map elements and canary splits, and back as iptables rules;
- listing.py: `nft -a list` read back, and the iptables view drift detection compares;
- translate.py: an iptables-restore transaction played out on the table as read, as nft commands;
- migrate.py: the move from the layout before the maps (one chain per app), app by app.

The names other modules use are re-exported here.
"""

from __future__ import annotations

from deployer.plan.nft.elements import (
    Element,
    Rule,
    Split,
    add_elements,
    app_view,
    delete_elements,
    effective,
    element,
    element_of,
    ordered,
    render_replace,
    rule_of,
    split_listed,
    split_of,
)
from deployer.plan.nft.family import FAMILIES, IP, IP6, Family, destination, family_of
from deployer.plan.nft.forms import CANNOT, FORMS, RuleForm, forms, rule_to_iptables, rule_to_nft
from deployer.plan.nft.layout import (
    BASE_CHAINS,
    COMMENT_LIMIT,
    MAINTENANCE,
    MAP_TYPES,
    PROTOCOLS,
    Key,
    Order,
    base_declarations,
    dispatch,
    dispatch_rules,
    is_app_chain,
    map_declarations,
    map_name,
    map_types,
    splits_chain,
    table_name,
)
from deployer.plan.nft.listing import Table, parse_listing
from deployer.plan.nft.translate import Translation, app_chains_only, has_nat, touched_apps, translate_restore

__all__ = [
    "BASE_CHAINS",
    "CANNOT",
    "COMMENT_LIMIT",
    "FAMILIES",
    "FORMS",
    "IP",
    "IP6",
    "MAINTENANCE",
    "MAP_TYPES",
    "PROTOCOLS",
    "Element",
    "Family",
    "Key",
    "Order",
    "Rule",
    "RuleForm",
    "Split",
    "Table",
    "Translation",
    "add_elements",
    "app_chains_only",
    "app_view",
    "base_declarations",
    "delete_elements",
    "destination",
    "dispatch",
    "dispatch_rules",
    "effective",
    "element",
    "element_of",
    "family_of",
    "forms",
    "has_nat",
    "is_app_chain",
    "map_declarations",
    "map_name",
    "map_types",
    "ordered",
    "parse_listing",
    "render_replace",
    "rule_of",
    "rule_to_iptables",
    "rule_to_nft",
    "split_listed",
    "split_of",
    "splits_chain",
    "table_name",
    "touched_apps",
    "translate_restore",
]
