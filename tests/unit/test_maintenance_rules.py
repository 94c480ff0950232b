"""Maintenance mode, failover, the status-port forward and host-bound apps: the rules as exact text, the record's
transitions and the page."""

import pytest

from deployer.config import AppConfig, HealthCheck, PortMapping
from deployer.errors import NotDeployable
from deployer.plan import app_chain, drain, hostbound, maintenance, retries, rules
from deployer.plan.records import AppState, Instance
from deployer.plan.rules import ChainNames, Forward, SavedTable
from support.configs import host_bound_app
from support.instances import BLUE, GREEN

NAMES = ChainNames("DEPLOYER")
MPORT = 8999
DEMO = AppConfig(
    name="demo",
    image="127.0.0.1:5000/demo",
    ports=(
        PortMapping(1000, 8080, "tcp", 1001, 1002),
        PortMapping(1000, 9090, "udp", 1001, 1002),
        PortMapping(1443, 8443, "tcp", 1444, 1445),
    ),
    health=HealthCheck(type="http", port=8080, path="/healthz"),
    status_port=1005,
)
WEB = host_bound_app("web", 80, 443)
NOW = "2026-11-21T11:00:00.000Z"


def forwards(instance: Instance) -> list[Forward]:
    comment = f"demo {instance.port_set} {instance.tag}"
    return [Forward(p.protocol, p.external, instance.address, p.container, comment) for p in DEMO.ports]


def chain(state: AppState) -> list[str]:
    return app_chain.wanted(NAMES, DEMO, state, forwards(state.active) if state.active else [], MPORT)


SERVING_GREEN = [
    '-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m comment --comment "demo green v2" '
    "-j DNAT --to-destination 172.18.0.3:8080",
    '-A DEPLOYER-demo -p udp -m udp --dport 1000 -m comment --comment "demo green v2" '
    "-j DNAT --to-destination 172.18.0.3:9090",
    '-A DEPLOYER-demo -p tcp -m tcp --dport 1443 -m comment --comment "demo green v2" '
    "-j DNAT --to-destination 172.18.0.3:8443",
    '-A DEPLOYER-demo -p tcp -m tcp --dport 1005 -m comment --comment "demo status green v2" '
    "-j DNAT --to-destination 172.18.0.3:8080",
]
MAINTENANCE_GREEN = [
    '-A DEPLOYER-demo -p tcp -m tcp --dport 1000 -m comment --comment "demo maintenance" -j REDIRECT --to-ports 8999',
    '-A DEPLOYER-demo -p tcp -m tcp --dport 1443 -m comment --comment "demo maintenance" -j REDIRECT --to-ports 8999',
    '-A DEPLOYER-demo -p udp -m udp --dport 1000 -m comment --comment "demo green v2" '
    "-j DNAT --to-destination 172.18.0.3:9090",
]


# --- what the app chain holds --------------------------------------------------------------------


def test_serving_forwards_every_port_and_the_status_port_to_the_instance():
    assert chain(AppState(app="demo", active=GREEN)) == SERVING_GREEN


def test_drained_serving_has_no_status_forward():
    state = drain.drained(AppState(app="demo", active=GREEN), actor="cli:ops", now=NOW)
    assert chain(state) == SERVING_GREEN[:3]
    assert chain(drain.undrained(state, now=NOW)) == SERVING_GREEN


def test_maintenance_redirects_tcp_ports_keeps_udp_and_closes_the_status_port():
    state = maintenance.manual_on(AppState(app="demo", active=GREEN), actor="cli:ops", now=NOW, message="soon")
    assert chain(state) == MAINTENANCE_GREEN


def test_maintenance_without_an_instance_still_redirects():
    state = maintenance.manual_on(AppState(app="demo"), actor="cli:ops", now=NOW)
    assert chain(state) == MAINTENANCE_GREEN[:2]
    assert chain(AppState(app="demo")) == []


def test_a_failover_holds_only_for_the_instance_that_failed():
    failed = maintenance.failover_on(AppState(app="demo", active=BLUE), now=NOW, failures=3, last="refused")
    assert maintenance.failover_applies(failed) and maintenance.in_maintenance(failed)
    assert chain(failed)[:2] == MAINTENANCE_GREEN[:2]
    # A deploy promotes green: the failover was about blue, so green serves, and the record forgets it.
    promoted = failed.promoted(GREEN, NOW)
    assert not maintenance.failover_applies(promoted) and not maintenance.in_maintenance(promoted)
    assert chain(promoted) == SERVING_GREEN
    assert maintenance.after_promotion(promoted).mode == "serving"
    assert maintenance.after_promotion(promoted).mode_detail == {}


def test_a_deploy_keeps_a_manual_maintenance():
    manual = maintenance.manual_on(AppState(app="demo", active=BLUE), actor="cli:ops", now=NOW)
    promoted = maintenance.after_promotion(manual.promoted(GREEN, NOW))
    assert promoted.mode == "maintenance" and chain(promoted) == MAINTENANCE_GREEN
    assert app_chain.flip_detail(manual, promoted)["mode"] == "maintenance"


def test_flip_detail_says_a_failover_ended():
    failed = maintenance.failover_on(AppState(app="demo", active=BLUE), now=NOW, failures=3, last="refused")
    after = maintenance.after_promotion(failed.promoted(GREEN, NOW))
    assert app_chain.flip_detail(failed, after) == {"failover": "ended by the new instance"}
    assert app_chain.flip_detail(AppState(app="demo", active=BLUE), AppState(app="demo", active=GREEN)) == {}


def test_back_to_serving_takes_the_address_the_instance_has_now():
    failed = maintenance.failover_on(AppState(app="demo", active=GREEN), now=NOW, failures=3, last="refused")
    back = maintenance.back_to_serving(failed, now=NOW, address="172.18.0.9")
    assert back.mode == "serving" and back.mode_detail == {} and back.active.address == "172.18.0.9"
    assert back.active.container_id == GREEN.container_id


def test_the_failover_record_names_the_instance_and_the_last_probe():
    failed = maintenance.failover_on(
        AppState(app="demo", active=GREEN), now=NOW, failures=3, last="GET /healthz: ConnectionRefusedError"
    )
    assert failed.mode_detail == {
        "reason": "failover",
        "actor": "watchdog",
        "since": NOW,
        "container_id": GREEN.container_id,
        "container": "deployer-demo-green",
        "failures": 3,
        "last_probe": "GET /healthz: ConnectionRefusedError",
    }
    assert maintenance.describe(failed) == (
        "mode: maintenance page (automatic failover since 2026-11-21T11:00:00.000Z: deployer-demo-green failed 3 "
        "checks; last: GET /healthz: ConnectionRefusedError)"
    )


def test_status_notes():
    state = drain.drained(
        maintenance.manual_on(AppState(app="demo", active=GREEN), actor="cli:ops", now=NOW, message="db migration"),
        actor="cli:ops",
        now=NOW,
    )
    assert app_chain.notes(DEMO, state) == [
        "mode: maintenance page (by cli:ops since 2026-11-21T11:00:00.000Z, message 'db migration')",
        "drained: out of the upstream's rotation (status port closed) by cli:ops since 2026-11-21T11:00:00.000Z",
    ]
    assert app_chain.notes(DEMO, AppState(app="demo", active=GREEN)) == []
    assert app_chain.notes(WEB, AppState(app="web")) == [
        "host-bound: runs on the host; clients from other machines get the maintenance page while nothing "
        "listens on port 80, 443"
    ]


# --- host-bound apps ------------------------------------------------------------------------------

WEB_SOCKET_RULES = [
    "-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 80 -m socket --nowildcard -m comment --comment "
    '"web: a socket listens" -j RETURN',
    '-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 80 -m comment --comment "web: nothing listens" '
    "-j REDIRECT --to-ports 8999",
    "-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 443 -m socket --nowildcard -m comment --comment "
    '"web: a socket listens" -j RETURN',
    '-A DEPLOYER-HOSTBOUND -p tcp -m tcp --dport 443 -m comment --comment "web: nothing listens" '
    "-j REDIRECT --to-ports 8999",
]


def test_socket_rules_let_a_listener_through_and_send_the_rest_to_the_page():
    assert hostbound.app_rules(NAMES, WEB, MPORT) == WEB_SOCKET_RULES
    assert hostbound.chain_rules(NAMES, [DEMO, WEB], MPORT) == WEB_SOCKET_RULES


def test_the_socket_chain_is_jumped_to_from_prerouting_only():
    text = hostbound.render_ensure(SavedTable(), NAMES, {"demo": DEMO, "web": WEB}, MPORT)
    assert text == "\n".join(
        [
            "*nat",
            ":DEPLOYER-HOSTBOUND - [0:0]",
            *WEB_SOCKET_RULES,
            "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND",
            "COMMIT",
            "",
        ]
    )
    assert "OUTPUT" not in text


def test_ensuring_the_socket_chain_again_changes_nothing():
    live = SavedTable(
        {
            "PREROUTING": ["-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND"],
            "DEPLOYER-HOSTBOUND": list(WEB_SOCKET_RULES),
        }
    )
    assert hostbound.render_ensure(live, NAMES, {"web": WEB}, MPORT) is None
    assert hostbound.live_app_rules(live, NAMES, WEB) == WEB_SOCKET_RULES
    live.chains["DEPLOYER-HOSTBOUND"] = WEB_SOCKET_RULES[:2]
    assert hostbound.render_ensure(live, NAMES, {"web": WEB}, MPORT) == "\n".join(
        ["*nat", ":DEPLOYER-HOSTBOUND - [0:0]", *WEB_SOCKET_RULES, "COMMIT", ""]
    )


def test_host_bound_maintenance_redirects_in_the_app_chain_for_every_client():
    state = maintenance.manual_on(AppState(app="web"), actor="cli:ops", now=NOW)
    assert app_chain.wanted(NAMES, WEB, state, [], MPORT) == [
        '-A DEPLOYER-web -p tcp -m tcp --dport 80 -m comment --comment "web maintenance" -j REDIRECT --to-ports 8999',
        '-A DEPLOYER-web -p tcp -m tcp --dport 443 -m comment --comment "web maintenance" -j REDIRECT --to-ports 8999',
    ]
    assert app_chain.wanted(NAMES, WEB, AppState(app="web"), [], MPORT) == []


def test_rules_text_of_a_host_bound_app_shows_its_socket_rules():
    text = rules.render_restore(SavedTable(), NAMES, "deployer0", {"web": []})
    assert hostbound.with_socket_rules(text, NAMES, WEB, MPORT) == "\n".join(
        [
            "*nat",
            ":DEPLOYER - [0:0]",
            ":DEPLOYER-POSTROUTING - [0:0]",
            ":DEPLOYER-web - [0:0]",
            ":DEPLOYER-HOSTBOUND - [0:0]",
            *rules.postrouting_rules(NAMES, "deployer0"),
            "-A DEPLOYER -j DEPLOYER-web",
            "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER",
            "-I OUTPUT 1 -m addrtype --dst-type LOCAL -j DEPLOYER",
            "-A POSTROUTING -j DEPLOYER-POSTROUTING",
            *WEB_SOCKET_RULES,
            "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND",
            "COMMIT",
            "",
        ]
    )


def test_teardown_removes_the_prerouting_jump_to_the_socket_chain_before_the_chain():
    live = SavedTable(
        {
            "PREROUTING": [
                "-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND",
                "-A PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER",
            ],
            "OUTPUT": ["-A OUTPUT -m addrtype --dst-type LOCAL -j DEPLOYER"],
            "DEPLOYER": [],
            "DEPLOYER-HOSTBOUND": list(WEB_SOCKET_RULES),
        }
    )
    assert rules.render_teardown(live, NAMES) == "\n".join(
        [
            "*nat",
            "-D PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER",
            "-D OUTPUT -m addrtype --dst-type LOCAL -j DEPLOYER",
            "-D PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER-HOSTBOUND",
            "-F DEPLOYER",
            "-F DEPLOYER-HOSTBOUND",
            "-X DEPLOYER",
            "-X DEPLOYER-HOSTBOUND",
            "COMMIT",
            "",
        ]
    )


def test_a_host_bound_app_cannot_be_deployed():
    with pytest.raises(NotDeployable) as caught:
        hostbound.check_deployable(WEB)
    assert caught.value.exit_code == 2
    assert str(caught.value) == (
        "app 'web' is host-bound: it runs on the host itself, not in a container the "
        "deployer starts, so there is nothing to deploy"
    )
    hostbound.check_deployable(DEMO)


# --- the page ------------------------------------------------------------------------------------


def test_the_default_page_names_the_app_escapes_the_message_and_reloads():
    page = maintenance.page("demo", None, "Back at <10:00> & later").decode()
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<p>demo is down for maintenance." in page
    assert "<p>Back at &lt;10:00&gt; &amp; later</p>" in page
    assert "{{" not in maintenance.page(None).decode() and "This site is down" in maintenance.page(None).decode()


def test_an_own_page_gets_app_and_message_filled_in():
    template = "<h1>{{app}}</h1><p>{{message}}</p>"
    assert maintenance.page("demo", template, "a & b") == b"<h1>demo</h1><p>a &amp; b</p>"
    assert maintenance.page("demo", template, None) == b"<h1>demo</h1><p></p>"
    assert maintenance.page("demo", "") == b""  # an empty file is served as it is, not the default


# --- the watchdog's retry rules (mangle) -----------------------------------------------------------

RETRY_RULES = [
    "-A DEPLOYER-RETRY -i deployer0 -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate DNAT --ctorigdstport 1000 "
    '! --ctstatus ASSURED --ctdir REPLY -m comment --comment "demo: a refusal of its instance becomes a retry" '
    "-j DROP",
    "-A DEPLOYER-RETRY -i deployer0 -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate DNAT --ctorigdstport 1443 "
    '! --ctstatus ASSURED --ctdir REPLY -m comment --comment "demo: a refusal of its instance becomes a retry" '
    "-j DROP",
]
SAVED_MANGLE = """\
*mangle
:PREROUTING ACCEPT [0:0]
:DEPLOYER-RETRY - [0:0]
-A PREROUTING -j DEPLOYER-RETRY
{rules}
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j ELSEWHERE
COMMIT
"""


def test_retry_rules_drop_only_resets_of_unfinished_handshakes_on_tcp_ports():
    assert retries.chain_rules(NAMES, [DEMO], "deployer0") == RETRY_RULES
    assert retries.render_ensure(SavedTable(), NAMES, [DEMO], "deployer0") == "\n".join(
        ["*mangle", ":DEPLOYER-RETRY - [0:0]", *RETRY_RULES, "-I PREROUTING 1 -j DEPLOYER-RETRY", "COMMIT", ""]
    )


def test_retry_rules_in_place_are_read_back_and_left_alone_then_removed():
    live = retries.parse(SAVED_MANGLE.format(rules="\n".join(RETRY_RULES)))
    assert live.rules("PREROUTING") == ["-A PREROUTING -j DEPLOYER-RETRY"]
    assert retries.render_ensure(live, NAMES, [DEMO], "deployer0") is None
    assert retries.render_removal(live, NAMES) == "\n".join(
        ["*mangle", "-D PREROUTING -j DEPLOYER-RETRY", "-F DEPLOYER-RETRY", "-X DEPLOYER-RETRY", "COMMIT", ""]
    )
    assert retries.render_removal(SavedTable(), NAMES) is None
