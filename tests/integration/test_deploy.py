"""Deploy, deploy again and roll back, seen from every kind of client, on the real host."""

from __future__ import annotations

import pytest

from support.integration import IMAGE, demo_app, host_address, http_get, outside_get, udp_ask

pytestmark = pytest.mark.integration


def served(outside, port: int) -> dict[str, str]:
    """What each kind of client gets on the external port: outside (PREROUTING), 127.0.0.1 and the host address (OUTPUT)."""
    return {
        "outside": outside_get(outside, port),
        "loopback": http_get("127.0.0.1", port).strip(),
        "host": http_get(host_address(), port).strip(),
    }


def versions(seen: dict[str, str]) -> set[str]:
    return {answer.split()[0] for answer in seen.values()}


def test_deploy_then_upgrade_then_rollback_reaches_every_client(deployer, outside):
    deployer.configure(demo_app("web", external=18000, blue=18001, green=18002, udp=(18003, 18004, 18005)))
    engine = deployer.engine()

    first = engine.deploy("web", "v1", actor="test")
    assert (first.port_set, first.previous_tag) == ("blue", None)
    seen = served(outside, 18000)
    assert versions(seen) == {"v1"}
    assert udp_ask("127.0.0.1", 18003, "a") == "v1 a"

    second = engine.deploy("web", "v2", actor="test")
    assert (second.port_set, second.previous_tag) == ("green", "v1")
    assert versions(served(outside, 18000)) == {"v2"}
    assert udp_ask("127.0.0.1", 18003, "b") == "v2 b"
    assert [c.name for c in deployer.containers("web")] == [f"{deployer.prefix.lower()}-web-green"]

    back = engine.rollback("web", actor="test")
    assert (back.tag, back.port_set) == ("v1", "blue")
    assert versions(served(outside, 18000)) == {"v1"}
    status = engine.status("web")[0]
    assert status.rules_match and status.active.tag == "v1" and status.previous.tag == "v2"
    assert status.active.digest == first.digest  # the rollback ran the very image v1 ran before


def test_outside_client_source_address_reaches_the_app(deployer, outside):
    deployer.configure(demo_app("web", external=18010, blue=18011, green=18012))
    deployer.engine().deploy("web", "v1", actor="test")
    seen = served(outside, 18010)
    assert seen["outside"].split()[1].split(":")[0] == outside.client_ip
    assert seen["host"].split()[1].split(":")[0] == host_address()


def test_rules_live_only_in_the_deployers_chains(deployer):
    deployer.configure(demo_app("web", external=18020, blue=18021, green=18022))
    result = deployer.engine().deploy("web", "v1", actor="test")
    container = deployer.containers("web")[0]
    address = container.address("dpltest")
    p = deployer.prefix
    assert deployer.chain("web") == [
        f'-A {p}-web -p tcp -m tcp --dport 18020 -m comment --comment "web blue v1" '
        f"-j DNAT --to-destination {address}:8080"
    ]
    nat = deployer.nat()
    assert nat.rules(p) == [f"-A {p} -j {p}-web"]
    assert f"-A PREROUTING -m addrtype --dst-type LOCAL -j {p}" in nat.rules("PREROUTING")
    assert f"-A OUTPUT -m addrtype --dst-type LOCAL -j {p}" in nat.rules("OUTPUT")
    assert result.digest and result.digest.startswith("sha256:")
    assert container.labels["deployer.digest"] == result.digest
    assert container.labels["deployer.tag"] == "v1"
    assert container.labels["deployer.image"] == IMAGE


def test_cli_deploy_status_and_rules(deployer):
    deployer.configure(demo_app("web", external=18030, blue=18031, green=18032))
    deployed = deployer.cli("deploy", "web", "v1")
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.startswith("web: v1 is live on blue")
    status = deployer.cli("status", "web")
    assert status.returncode == 0 and "rules match" in status.stdout
    rules_text = deployer.cli("rules", "web").stdout
    assert f":{deployer.prefix}-web - [0:0]" in rules_text and "--dport 18030" in rules_text
