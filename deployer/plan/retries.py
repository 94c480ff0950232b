"""While the watchdog runs, a dying instance's refusals become retries. Pure: the rules, as iptables-save prints them.

When a container is killed, its network namespace lives on for some tens of milliseconds without the process:
its kernel answers new connections with a reset, and the client reports "connection refused" before any
watchdog could notice. One owned chain in the mangle table, jumped to from PREROUTING (where replies from the
containers come in, for outside and local clients alike), drops such resets:

    -i BRIDGE -p tcp --tcp-flags RST RST -m conntrack --ctstate DNAT --ctorigdstport PORT ! --ctstatus ASSURED
    --ctdir REPLY

that is, a reset that an instance (on the deployer's bridge) sent back on one of the app's DNATed connections that
never completed its handshake. A reset on an established connection (ASSURED) passes, and so does anything that
does not come from an instance (an app forwarded to another host, for one). The client, having no answer, sends
its SYN again a second later; conntrack has seen the reset and closed the entry, so the new SYN passes the nat
table again and takes the rules of that moment: the maintenance page once the watchdog has flipped, or the
instance if it came back.

Only while a watchdog runs: without one, a dead instance's clients would wait for a timeout instead of a quick
refusal. So `deployer watch` (and the server) writes the chain when it starts and removes it when it stops.
"""

from __future__ import annotations

from collections.abc import Iterable

from deployer.config import AppConfig
from deployer.plan.rules import ChainNames, SavedTable, parse_table, save_string

TABLE = "mangle"


def chain(names: ChainNames) -> str:
    return f"{names.prefix}-RETRY"


def jump(names: ChainNames) -> str:
    return f"-A PREROUTING -j {chain(names)}"


def chain_rules(names: ChainNames, apps: Iterable[AppConfig], bridge: str) -> list[str]:
    rules = []
    for app in sorted(apps, key=lambda a: a.name):
        for port in sorted({p.external for p in app.ports if p.protocol == "tcp"}):
            comment = save_string(f"{app.name}: a refusal of its instance becomes a retry")
            rules.append(
                f"-A {chain(names)} -i {bridge} -p tcp -m tcp --tcp-flags RST RST -m conntrack "
                f"--ctstate DNAT --ctorigdstport {port} ! --ctstatus ASSURED --ctdir REPLY "
                f"-m comment --comment {comment} -j DROP"
            )
    return rules


def parse(saved: str) -> SavedTable:
    """The mangle table of `iptables-save -t mangle` (the same shape as the nat table's)."""
    return parse_table(saved, TABLE)


def render_ensure(live: SavedTable, names: ChainNames, apps: Iterable[AppConfig], bridge: str) -> str | None:
    """One transaction that makes the chain hold these apps' rules, jumped to first in PREROUTING."""
    wanted = chain_rules(names, apps, bridge)
    lines = []
    if not live.has_chain(chain(names)) or live.rules(chain(names)) != wanted:
        lines += [f":{chain(names)} - [0:0]", *wanted]
    if jump(names) not in live.rules("PREROUTING"):
        lines.append(f"-I PREROUTING 1 -j {chain(names)}")
    return "\n".join([f"*{TABLE}", *lines, "COMMIT", ""]) if lines else None


def render_removal(live: SavedTable, names: ChainNames) -> str | None:
    if not live.has_chain(chain(names)):
        return None
    deletes = [rule.replace("-A ", "-D ", 1) for rule in live.rules("PREROUTING") if rule == jump(names)]
    return "\n".join([f"*{TABLE}", *deletes, f"-F {chain(names)}", f"-X {chain(names)}", "COMMIT", ""])
