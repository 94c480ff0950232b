"""Maintenance mode: where an app's external ports lead while it is down for work or has failed, and the page shown.

Pure: the rules (as iptables-save prints them), the mode's state transitions and the page. `modes.py` applies
them; `responder.py` serves the page.

How a client reaches the responder. The responder listens on the maintenance port on every local address, and
each tcp external port of the app gets one REDIRECT rule in the app's chain. REDIRECT rewrites the destination to
the primary address of the interface the packet came in on (PREROUTING: other machines) or to 127.0.0.1 (OUTPUT:
the host itself); a wildcard listener accepts both, so one rule serves both chains. DNAT to 127.0.0.1 is not used:
from PREROUTING the kernel drops such a packet as a martian unless `route_localnet=1` is set on the incoming
interface, and that setting lets any neighbour on the link reach every service bound to 127.0.0.1
(CVE-2020-8558). The responder learns which app a connection was for from its original destination port
(SO_ORIGINAL_DST, kept by conntrack).

Udp ports keep their forward to the instance: the page is HTTP, and an instance that still runs may answer.
"""

from __future__ import annotations

import html
from dataclasses import replace
from typing import Any

from deployer.config import AppConfig
from deployer.plan.records import SERVING, AppState
from deployer.plan.rules import save_string

MAINTENANCE = "maintenance"
MANUAL = "manual"  # an operator's `maintenance on`
FAILOVER = "failover"  # the watchdog's, tied to the instance that failed
RESPONDER_HEADER = "X-Deployer-Maintenance"  # on every answer of the responder, so a probe knows it
RETRY_AFTER = 5  # seconds, in the Retry-After header and the page's refresh


# --- the mode in the record ----------------------------------------------------------------------


def reason(state: AppState) -> str | None:
    return state.mode_detail.get("reason") if state.mode == MAINTENANCE else None


def failover_applies(state: AppState) -> bool:
    """A failover is about one instance: once another one is active (a deploy), it no longer holds."""
    return (
        reason(state) == FAILOVER
        and state.active is not None
        and state.mode_detail.get("container_id") == state.active.container_id
    )


def in_maintenance(state: AppState) -> bool:
    """Whether the external ports lead to the responder."""
    if state.mode != MAINTENANCE:
        return False
    return reason(state) != FAILOVER or failover_applies(state)


def manual_on(state: AppState, *, actor: str, now: str, message: str | None = None) -> AppState:
    detail: dict[str, Any] = {"reason": MANUAL, "actor": actor, "since": now}
    if message:
        detail["message"] = message
    return replace(state, mode=MAINTENANCE, mode_detail=detail, updated_at=now)


def serving(state: AppState, *, now: str) -> AppState:
    return replace(state, mode=SERVING, mode_detail={}, updated_at=now)


def failover_on(state: AppState, *, now: str, failures: int, last: str) -> AppState:
    assert state.active is not None, "a failover needs an active instance"
    detail = {
        "reason": FAILOVER,
        "actor": "watchdog",
        "since": now,
        "container_id": state.active.container_id,
        "container": state.active.container_name,
        "failures": failures,
        "last_probe": last,
    }
    return replace(state, mode=MAINTENANCE, mode_detail=detail, updated_at=now)


def back_to_serving(state: AppState, *, now: str, address: str) -> AppState:
    """Serve the active instance again, at the address it has now (a restarted container may get another)."""
    assert state.active is not None, "serving needs an active instance"
    active = replace(state.active, address=address)
    return replace(state, active=active, mode=SERVING, mode_detail={}, updated_at=now)


def after_promotion(state: AppState) -> AppState:
    """A deploy's new instance ends a failover about the old one; a manual maintenance stays."""
    if reason(state) == FAILOVER and not failover_applies(state):
        return replace(state, mode=SERVING, mode_detail={})
    return state


def describe(state: AppState) -> str | None:
    """One line for `deployer status`, or None while the app simply serves."""
    if state.mode == SERVING:
        return None
    detail = state.mode_detail
    if reason(state) == FAILOVER:
        if not failover_applies(state):
            return "mode: failover of an instance that is no longer active (ends at the next flip)"
        return (
            f"mode: maintenance page (automatic failover since {detail.get('since')}: "
            f"{detail.get('container')} failed {detail.get('failures')} checks; last: {detail.get('last_probe')})"
        )
    if reason(state) == MANUAL:
        message = f", message {detail['message']!r}" if detail.get("message") else ""
        return f"mode: maintenance page (by {detail.get('actor')} since {detail.get('since')}{message})"
    return f"mode: {state.mode}"


# --- the rules -----------------------------------------------------------------------------------


def redirect_rule(chain: str, app: str, port: int, maintenance_port: int) -> str:
    return (
        f"-A {chain} -p tcp -m tcp --dport {port} -m comment --comment {save_string(f'{app} maintenance')}"
        f" -j REDIRECT --to-ports {maintenance_port}"
    )


def redirect_rules(chain: str, app: AppConfig, maintenance_port: int) -> list[str]:
    """Every tcp external port of the app to the responder, in the order of the config."""
    seen: list[int] = []
    for port in app.ports:
        if port.protocol == "tcp" and port.external not in seen:
            seen.append(port.external)
    return [redirect_rule(chain, app.name, port, maintenance_port) for port in seen]


# --- the page ------------------------------------------------------------------------------------

DEFAULT_PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{{retry}}">
<title>Back in a moment</title>
<style>body{font-family:system-ui,sans-serif;max-width:34rem;margin:18vh auto;padding:0 1rem;color:#222}</style>
</head>
<body>
<h1>Back in a moment</h1>
<p>{{app}} is down for maintenance. This page reloads by itself in a few seconds.</p>
{{message}}
</body>
</html>
"""


def page(app: str | None, template: str | None = None, message: str | None = None) -> bytes:
    """The page, from the app's own template or the default. {{app}} and {{message}} are filled in, escaped."""
    text = DEFAULT_PAGE if template is None else template
    message_html = f"<p>{html.escape(message)}</p>" if message else ""
    if template is not None:
        message_html = html.escape(message or "")
    text = (
        text.replace("{{app}}", html.escape(app or "This site"))
        .replace("{{message}}", message_html)
        .replace("{{retry}}", str(RETRY_AFTER))
    )
    return text.encode("utf-8")
