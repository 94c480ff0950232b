"""Host-bound apps: servers that listen on the host itself (an nginx restarted by hand), not in a container.

Pure: the rules, as iptables-save prints them. For each tcp port of such an app, one owned chain holds

    -p tcp --dport PORT -m socket --nowildcard       -j RETURN     (a socket listens: let it through)
    -p tcp --dport PORT                               -j REDIRECT --to-ports MAINTENANCE_PORT

so a connection reaches the server while it listens, and the maintenance page while it does not (restart, crash),
decided per connection by the kernel, with no watchdog delay.

- `--nowildcard` makes the match see listeners bound to 0.0.0.0 (nginx's `listen 80`); without it the match
  ignores them and every connection would get the page.
- The socket match looks up sockets in the namespace where the packet is, the host's. It cannot see a socket
  inside a container's network namespace, so it is no use for container apps: the watchdog covers those.
- The kernel allows the socket match only in PREROUTING and INPUT: a chain that OUTPUT can reach (as the
  deployer's top chain) is refused. So this chain is jumped to from PREROUTING alone, and covers clients on other
  machines; processes on the host itself reach the server directly.

Maintenance mode (`maintenance on`) works for a host-bound app as for any app, in its own chain, for every client.

On a dual-stack host (`[deployer] ipv6`) the chain, its jump and the app chain are the same text in the IPv6 table
too: the socket match, REDIRECT and the address-type match read the same in ip6tables, so one rendering serves
both families, and an IPv6 client of a server that listens on IPv6 (`[::]:80`) is let through or shown the page
as an IPv4 one is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from deployer.config import AppConfig
from deployer.errors import NotDeployable
from deployer.plan.rules import ChainNames, SavedTable, save_string


def chain(names: ChainNames) -> str:
    # Upper case: app chains are lower case, so no app name can collide with it.
    return f"{names.prefix}-HOSTBOUND"


def jump(names: ChainNames) -> str:
    return f"-A PREROUTING -m addrtype --dst-type LOCAL -j {chain(names)}"


def app_rules(names: ChainNames, app: AppConfig, maintenance_port: int) -> list[str]:
    rules = []
    for port in sorted({p.external for p in app.ports if p.protocol == "tcp"}):
        rules.append(
            f"-A {chain(names)} -p tcp -m tcp --dport {port} -m socket --nowildcard -m comment --comment "
            f"{save_string(f'{app.name}: a socket listens')} -j RETURN"
        )
        rules.append(
            f"-A {chain(names)} -p tcp -m tcp --dport {port} -m comment --comment "
            f"{save_string(f'{app.name}: nothing listens')} -j REDIRECT --to-ports {maintenance_port}"
        )
    return rules


def chain_rules(names: ChainNames, apps: Iterable[AppConfig], maintenance_port: int) -> list[str]:
    """The whole chain: every host-bound app's rules, by app name."""
    return [
        rule
        for app in sorted((a for a in apps if a.host_bound), key=lambda a: a.name)
        for rule in app_rules(names, app, maintenance_port)
    ]


def render_ensure(
    live: SavedTable, names: ChainNames, apps: Mapping[str, AppConfig], maintenance_port: int
) -> str | None:
    """One transaction that makes the chain and its PREROUTING jump what the config says; None if they are."""
    wanted = chain_rules(names, apps.values(), maintenance_port)
    lines = []
    if live.rules(chain(names)) != wanted or not live.has_chain(chain(names)):
        lines.append(f":{chain(names)} - [0:0]")  # declaring a chain in a restore flushes it
        lines.extend(wanted)
    if jump(names) not in live.rules("PREROUTING"):
        lines.append(f"-I PREROUTING 1 {jump(names).removeprefix('-A PREROUTING ')}")
    if not lines:
        return None
    return "\n".join(["*nat", *lines, "COMMIT", ""])


def live_app_rules(live: SavedTable, names: ChainNames, app: AppConfig) -> list[str]:
    """The app's rules as they are in the live chain (picked by its ports, which no other app shares)."""
    ports = {f"--dport {p.external} " for p in app.ports if p.protocol == "tcp"}
    return [rule for rule in live.rules(chain(names)) if any(port in rule for port in ports)]


def in_step(live: SavedTable, names: ChainNames, app: AppConfig, maintenance_port: int) -> bool:
    """Whether `live` (a nat table of either family) holds the app's socket-match rules and the jump to them."""
    return live_app_rules(live, names, app) == app_rules(names, app, maintenance_port) and jump(names) in live.rules(
        "PREROUTING"
    )


def with_socket_rules(text: str, names: ChainNames, app: AppConfig, maintenance_port: int) -> str:
    """`deployer rules` for a host-bound app: the app chain's transaction plus its socket-match rules."""
    lines = text.rstrip("\n").split("\n")
    commit = lines.index("COMMIT")
    declarations = [i for i, line in enumerate(lines) if line.startswith(":")]
    at = declarations[-1] + 1 if declarations else 1
    extra = [*app_rules(names, app, maintenance_port), f"-I PREROUTING 1 {jump(names).removeprefix('-A PREROUTING ')}"]
    body = lines[:at] + [f":{chain(names)} - [0:0]"] + lines[at:commit] + extra + lines[commit:]
    return "\n".join(body) + "\n"


def check_deployable(app: AppConfig) -> None:
    if app.host_bound:
        raise NotDeployable(
            f"app {app.name!r} is host-bound: it runs on the host itself, not in a container the "
            f"deployer starts, so there is nothing to deploy",
            app=app.name,
        )
