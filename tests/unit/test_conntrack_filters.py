"""The conntrack filters after a flip, after a stop and while draining: exact argument lists."""

from deployer.config import AppConfig, HealthCheck, PortMapping
from deployer.plan import conntrack

DEMO = AppConfig(
    name="demo",
    image="127.0.0.1:5000/demo",
    ports=(
        PortMapping(external=1000, container=8080, protocol="tcp", blue=1001, green=1002),
        PortMapping(external=1000, container=9090, protocol="udp", blue=1001, green=1002),
        PortMapping(external=5353, container=53, protocol="udp", blue=5354, green=5355),
    ),
    health=HealthCheck(type="http", port=8080),
)
WEB = AppConfig(
    name="web",
    image="127.0.0.1:5000/web",
    ports=(
        PortMapping(external=8000, container=80, protocol="tcp", blue=8001, green=8002),
        PortMapping(external=8443, container=443, protocol="tcp", blue=8444, green=8445),
    ),
    health=HealthCheck(type="tcp", port=80),
)


def test_after_flip_deletes_udp_flows_of_the_old_addresses_and_unrouted_udp():
    assert conntrack.after_flip(DEMO, {"172.18.0.2"}) == [
        ["-p", "udp", "--orig-port-dst", "1000", "--reply-src", "172.18.0.2"],
        ["-p", "udp", "--orig-port-dst", "5353", "--reply-src", "172.18.0.2"],
        ["-p", "udp", "--orig-port-dst", "1000", "--reply-port-src", "1000"],
        ["-p", "udp", "--orig-port-dst", "5353", "--reply-port-src", "5353"],
    ]


def test_after_flip_with_several_old_addresses_is_sorted_and_deduplicated():
    assert conntrack.after_flip(DEMO, ["172.18.0.9", "172.18.0.2", "172.18.0.9"]) == [
        ["-p", "udp", "--orig-port-dst", "1000", "--reply-src", "172.18.0.2"],
        ["-p", "udp", "--orig-port-dst", "5353", "--reply-src", "172.18.0.2"],
        ["-p", "udp", "--orig-port-dst", "1000", "--reply-src", "172.18.0.9"],
        ["-p", "udp", "--orig-port-dst", "5353", "--reply-src", "172.18.0.9"],
        ["-p", "udp", "--orig-port-dst", "1000", "--reply-port-src", "1000"],
        ["-p", "udp", "--orig-port-dst", "5353", "--reply-port-src", "5353"],
    ]


def test_first_flip_has_no_old_address_but_still_cleans_unrouted_udp():
    assert conntrack.after_flip(DEMO, set()) == [
        ["-p", "udp", "--orig-port-dst", "1000", "--reply-port-src", "1000"],
        ["-p", "udp", "--orig-port-dst", "5353", "--reply-port-src", "5353"],
    ]


def test_after_stop_deletes_tcp_then_udp_flows_of_the_old_instance():
    assert conntrack.after_stop(DEMO, "172.18.0.2") == [
        ["-p", "tcp", "--orig-port-dst", "1000", "--reply-src", "172.18.0.2"],
        ["-p", "udp", "--orig-port-dst", "1000", "--reply-src", "172.18.0.2"],
        ["-p", "udp", "--orig-port-dst", "5353", "--reply-src", "172.18.0.2"],
    ]


def test_established_tcp_lists_only_established_flows_of_the_address():
    assert conntrack.established_tcp(DEMO, "172.18.0.2") == [
        ["-p", "tcp", "--orig-port-dst", "1000", "--reply-src", "172.18.0.2", "--state", "ESTABLISHED"],
    ]
    assert conntrack.established_tcp(WEB, "172.18.0.4") == [
        ["-p", "tcp", "--orig-port-dst", "8000", "--reply-src", "172.18.0.4", "--state", "ESTABLISHED"],
        ["-p", "tcp", "--orig-port-dst", "8443", "--reply-src", "172.18.0.4", "--state", "ESTABLISHED"],
    ]


def test_a_tcp_only_app_produces_no_udp_filter():
    assert conntrack.after_flip(WEB, {"172.18.0.4"}) == []
    assert conntrack.unrouted_udp_flows(WEB) == []
    assert conntrack.after_stop(WEB, "172.18.0.4") == [
        ["-p", "tcp", "--orig-port-dst", "8000", "--reply-src", "172.18.0.4"],
        ["-p", "tcp", "--orig-port-dst", "8443", "--reply-src", "172.18.0.4"],
    ]


def test_flows_to_names_protocol_external_port_and_reply_source():
    assert conntrack.flows_to(WEB, "tcp", "172.18.0.4") == [
        ["-p", "tcp", "--orig-port-dst", "8000", "--reply-src", "172.18.0.4"],
        ["-p", "tcp", "--orig-port-dst", "8443", "--reply-src", "172.18.0.4"],
    ]
    assert conntrack.flows_to(WEB, "udp", "172.18.0.4") == []


def test_ipv6_twins_name_the_instances_ipv6_address_and_keep_address_free_filters():
    filters = conntrack.after_flip(DEMO, {"172.18.0.2", "10.9.0.7"})  # 10.9.0.7: another host's, no twin
    assert conntrack.for_ipv6(filters, {"172.18.0.2": "fd6e:3b1d:5e2a::2"}) == [
        ["-f", "ipv6", "-p", "udp", "--orig-port-dst", "1000", "--reply-src", "fd6e:3b1d:5e2a::2"],
        ["-f", "ipv6", "-p", "udp", "--orig-port-dst", "5353", "--reply-src", "fd6e:3b1d:5e2a::2"],
        ["-f", "ipv6", "-p", "udp", "--orig-port-dst", "1000", "--reply-port-src", "1000"],
        ["-f", "ipv6", "-p", "udp", "--orig-port-dst", "5353", "--reply-port-src", "5353"],
    ]
    drain = conntrack.established_tcp(WEB, "172.18.0.3")
    assert conntrack.for_ipv6(drain, {"172.18.0.3": "fd6e:3b1d:5e2a::3"})[0] == [
        *("-f", "ipv6", "-p", "tcp", "--orig-port-dst", "8000"),
        *("--reply-src", "fd6e:3b1d:5e2a::3", "--state", "ESTABLISHED"),
    ]
