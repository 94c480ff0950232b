"""The baselines' commands and container arguments, compared exactly."""

from __future__ import annotations

from pathlib import Path

from bench.baselines import app_flows, filter_protocol, iptables_dnat, published_arguments, seed_flip
from bench.plan import Ports, RunNames, app_toml, deployer_toml
from deployer import config as config_module
from deployer.plan.containers import Release
from deployer.plan.rules import Forward

NEW = Forward("tcp", 24010, "172.19.0.3", 8080, "seed green v2")
OLD = Forward("tcp", 24010, "172.19.0.2", 8080, "seed blue v1")


def test_the_seed_recipe_appends_the_new_rule_then_deletes_the_old():
    assert seed_flip("DBABCDE-seed", [NEW], [OLD]) == [
        [
            "iptables",
            "-w",
            "10",
            "-t",
            "nat",
            "-A",
            "DBABCDE-seed",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "24010",
            "-m",
            "comment",
            "--comment",
            "seed green v2",
            "-j",
            "DNAT",
            "--to-destination",
            "172.19.0.3:8080",
        ],
        [
            "iptables",
            "-w",
            "10",
            "-t",
            "nat",
            "-D",
            "DBABCDE-seed",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "24010",
            "-m",
            "comment",
            "--comment",
            "seed blue v1",
            "-j",
            "DNAT",
            "--to-destination",
            "172.19.0.2:8080",
        ],
    ]
    assert seed_flip("C", [NEW], []) == [iptables_dnat("-A", "C", NEW)]


def config(tmp_path: Path):
    path = tmp_path / "deployer.toml"
    (tmp_path / "h").mkdir()  # a configured hooks folder must exist, as bench_config makes it
    path.write_text(
        deployer_toml(
            RunNames("DBABCDE"),
            tmp_path / "s",
            tmp_path / "h",
            [app_toml("stop-start", "127.0.0.1:5000/deployer-bench", Ports.block(0).scenario("stop-start"))],
        )
    )
    return config_module.load(path)


def test_the_seed_flush_covers_every_flow_of_the_app_and_nothing_else(tmp_path: Path):
    app = config(tmp_path).app("stop-start")
    assert app_flows(app) == [["-p", "tcp", "--orig-port-dst", "24020"], ["-p", "udp", "--orig-port-dst", "24023"]]


def test_stop_then_start_publishes_the_external_ports_on_each_address(tmp_path: Path):
    cfg = config(tmp_path)
    arguments = published_arguments(
        cfg.settings,
        cfg.app("stop-start"),
        "green",
        Release("v2", "127.0.0.1:5000/deployer-bench"),
        ["127.0.0.1", "198.18.4.1"],
    )
    assert arguments["ports"] == {
        "8080/tcp": [("127.0.0.1", 24020), ("198.18.4.1", 24020)],
        "9090/udp": [("127.0.0.1", 24023), ("198.18.4.1", 24023)],
    }
    assert arguments["name"] == "dbabcde-stop-start-green" and arguments["network"] == "dbabcde"
    assert arguments["labels"]["deployer.owner"] == "dbabcde"


def test_the_naive_swap_skips_udp_filters_only():
    assert filter_protocol(["-p", "udp", "--orig-port-dst", "1"]) == "udp"
    assert filter_protocol(["--orig-port-dst", "1", "-p", "tcp"]) == "tcp"
    assert filter_protocol(["--reply-src", "10.0.0.1"]) is None


def test_the_baselines_rules_carry_the_same_comment_as_the_deployers(tmp_path: Path):
    from bench.baselines import forwards

    app = config(tmp_path).app("stop-start")
    assert forwards(app, "172.19.0.2", "blue", "v1") == [
        Forward("tcp", 24020, "172.19.0.2", 8080, "stop-start blue v1"),
        Forward("udp", 24023, "172.19.0.2", 9090, "stop-start blue v1"),
    ]
