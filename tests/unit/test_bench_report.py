"""Tables and BENCHMARKS.md from results: exact where the layout matters, by content elsewhere."""

from __future__ import annotations

from bench import report, tables
from bench.machine import cpu_model, memory_gib


def test_a_pipe_table_pads_and_aligns():
    assert tables.table(["path", "req/s"], [["direct", "9,000"], ["dnat", "8,950"]]) == (
        "| path   | req/s |\n| ------ | ----: |\n| direct | 9,000 |\n| dnat   | 8,950 |"
    )


def test_figures_are_formatted_for_reading():
    assert [tables.ms(v) for v in (0.234, 4.0, 42.35, 1234.5, None)] == ["234 µs", "4 ms", "42.35 ms", "1,234 ms", "-"]
    assert tables.ratio(0.987) == "x0.99" and tables.ratio(None) == "-"


def scenario(failed: int = 0) -> dict:
    return {
        "deploys": 2,
        "requests": 1000,
        "failed_requests": failed,
        "udp_sent": 500,
        "udp_unanswered": 1,
        "udp_stale_answers": 0,
        "worst_latency_around_switch_ms": 12.5,
        "flip": {
            "committed_ms": {"median": 4.2, "p95": 6.0},
            "step_ms": {"median": 30.0},
            "healthy_to_flip_done_ms": {"median": 31.0},
        },
        "switch_ms": {"median": 30.0},
        "deploy_ms": {"median": 2500},
        "steps_ms": {"pull": 10.0, "flip": 30.0, "stop": 200.0},
        "clients": {
            "host-new": {
                "requests": 600,
                "failed": failed,
                "p50_ms": 0.3,
                "p99_ms": 4.0,
                "worst_around_switch_ms": 12.5,
                "errors": {"ConnectionRefusedError": failed} if failed else {},
            },
            "host-udp": {"sent": 500, "unanswered": 1, "stale_answers": 0, "longest_silence_s": 0.5},
        },
        "timeline": {"t": [], "switches": []},
    }


def test_the_deploys_table_has_one_row_per_scenario_in_order():
    text = tables.deploys_table({"seed": scenario(3), "ours": scenario()})
    rows = text.splitlines()[2:]
    assert rows[0].startswith("| deployer (ours)") and "|      0 |" in rows[0]
    assert rows[1].startswith("| seed recipe") and "|      3 |" in rows[1]


def test_the_steps_table_keeps_the_deploy_order_of_steps():
    header = tables.steps_table({"ours": scenario()}).splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "scenario (median ms per step)",
        "pull",
        "flip",
        "stop",
        "whole deploy",
    ]


def run_info() -> dict:
    return {
        "command": "sudo bench/run",
        "started_at": "2026-11-21 10:00 UTC",
        "duration_s": 600.0,
        "machine": {
            "nproc": 2,
            "memory_gib": 23.5,
            "kernel": "6.1.0",
            "cpu": "AMD EPYC",
            "os": "Debian 12.8",
            "python": "3.11.7",
        },
        "tools": {"wrk": "4.1.0"},
        "load_average": {"start": [1.0, 1.0, 1.0], "end": [2.0, 1.5, 1.0]},
        "plan": {},
        "errors": {},
        "parts": ["datapath", "deploys", "scale"],
        "targets": [{"target": "full run under 15 min", "met": True, "detail": "10.0 min"}],
    }


def test_benchmarks_markdown_names_the_machine_the_command_and_links_the_plots():
    parts = {
        "deploys": {
            "settings": {"deploys": 2, "load_pause_s": 0.01, "around_switch_s": [0.5, 1.0], "sticky_grace_s": 0.25},
            "scenarios": {"ours": scenario(), "seed": scenario(3)},
        }
    }
    text = report.benchmarks_markdown(
        run_info(),
        parts,
        {"deploys": "bench/results/deploys.png"},
        [("bench/results/audit.json", "written by `python3 bench/audit_bench.py`")],
    )
    assert text.startswith("# Benchmarks\n")
    assert "`sudo bench/run`" in text and "| 2            | 23.5 GiB | 6.1.0  | AMD EPYC |" in text
    assert "![Latency over time across the deploys](bench/results/deploys.png)" in text
    assert (
        "- **seed recipe: iptables -A/-D, conntrack flush**: host-new: 3x ConnectionRefusedError; host-udp: 1 "
        "unanswered" in text
    )
    assert "bench/results/audit.json" in text and "## 1. Data path" not in text
    assert "load average 1.00 / 1.00 / 1.00 at the start" in text


def test_machine_facts_are_read_from_proc_text():
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert cpu_model("") == "unknown"
    assert memory_gib("MemTotal:       24683520 kB\nMemFree: 1 kB\n") == 23.5


def path_figures(rps: float, ratio: float, p50: float = 0.4) -> dict:
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": 1.5,
        "rps_ratio": ratio,
        "p50_ratio": 1.0,
        "p99_ratio": 1.1,
        "errors": 0,
    }


def datapath_results(pinned: dict) -> dict:
    return {
        "started_at": "2026-11-21 10:00 UTC",
        "settings": {"threads": 1, "connections": 32, "seconds": 4.0, "rounds": 6, "warmup_seconds": 1.0},
        "summary": {
            "host": {
                "direct": path_figures(40000, 1.0),
                "dnat": path_figures(38000, 0.95),
                "nginx": path_figures(20000, 0.5),
            },
            "outside": {"direct": path_figures(36000, 1.0), "dnat": path_figures(35000, 0.97)},
        },
        "pinned": pinned,
    }


PINNED = {
    "load_cpu": 0,
    "backend_cpu": 1,
    "proxies_cpu": 1,
    "rounds": 4,
    "paths": ["direct", "dnat"],
    "summary": {"host": {"direct": path_figures(30000, 1.0), "dnat": path_figures(29500, 0.983)}},
}


def test_the_data_path_table_sets_the_pinned_rounds_beside_the_unpinned_ones():
    text = tables.datapath_table(datapath_results(PINNED)["summary"], "host", PINNED["summary"])
    assert text.splitlines()[0] == (
        "| path                          | requests/s, unpinned | p50, unpinned | p99, unpinned "
        "| req/s vs direct, unpinned | p50 vs direct, unpinned | p99 vs direct, unpinned | errors, unpinned "
        "| requests/s, pinned | req/s vs direct, pinned | p50 vs direct, pinned | errors, pinned |"
    )
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in text.splitlines()[2:]]
    assert rows == [
        [
            "direct to the container",
            "40,000",
            "400 µs",
            "1.50 ms",
            "x1.00",
            "x1.00",
            "x1.10",
            "0",
            "30,000",
            "x1.00",
            "x1.00",
            "0",
        ],
        [
            "deployer external port (DNAT)",
            "38,000",
            "400 µs",
            "1.50 ms",
            "x0.95",
            "x1.00",
            "x1.10",
            "0",
            "29,500",
            "x0.98",
            "x1.00",
            "0",
        ],
        ["nginx reverse proxy", "20,000", "400 µs", "1.50 ms", "x0.50", "x1.00", "x1.10", "0", "-", "-", "-", "-"],
    ]
    # Without pinned rounds (results from before them), the unpinned columns alone.
    assert ", pinned" not in tables.datapath_table(datapath_results(PINNED)["summary"], "host")


def test_the_report_says_how_the_rounds_were_pinned_or_why_they_were_skipped():
    pinned = report.benchmarks_markdown(run_info(), {"datapath": datapath_results(PINNED)}, {})
    assert (
        "Pinned rounds: 4 rounds of direct, dnat, after the unpinned rounds of the iptables backend, with wrk pinned "
        "to CPU 0 (`taskset -c 0`) and the container to CPU 1 (Docker's cpuset), HAProxy and nginx with it;" in pinned
    )
    why = "one core only (CPU 0): wrk and the container cannot be kept apart"
    skipped = report.benchmarks_markdown(run_info(), {"datapath": datapath_results({"skipped": why})}, {})
    assert f"Pinned rounds: skipped, {why}." in skipped and "req/s vs direct, pinned" not in skipped
    terminal = report.terminal_report(run_info(), {"datapath": datapath_results({"skipped": why})})
    assert f"Pinned rounds: skipped, {why}." in terminal


def test_a_section_measured_by_an_earlier_run_says_so():
    run = {**run_info(), "started_at": "2026-12-07 22:00 UTC", "command": "sudo bench/run --parts datapath"}
    run["parts"] = ["datapath"]
    datapath = {**datapath_results(PINNED), "started_at": "2026-12-07 22:00 UTC"}
    deploys = {
        "started_at": "2026-12-02 03:28 UTC",
        "command": "sudo bench/run",
        "settings": {"deploys": 2, "load_pause_s": 0.01, "around_switch_s": [0.5, 1.0], "sticky_grace_s": 0.25},
        "scenarios": {"ours": scenario()},
    }
    text = report.benchmarks_markdown(run, {"datapath": datapath, "deploys": deploys}, {})
    assert (
        "Last run: `sudo bench/run --parts datapath`, 2026-12-07 22:00 UTC, 10.0 min; it measured datapath, and "
        "deploys are from earlier runs, as each says." in text
    )
    assert text.count("These figures are from an earlier run") == 1
    assert "These figures are from an earlier run: 2026-12-02 03:28 UTC (`sudo bench/run`)." in text


CLUSTER = {
    "measured_at": "2026-12-07 22:30 UTC",
    "seconds": 5.0,
    "rounds": 3,
    "medians": {
        "direct": {"rps": 38914.57, "p50_us": 910.0},
        "shared": {"rps": 29813.66, "p50_us": 1140.0},
        "haproxy": {"rps": 21151.14, "p50_us": 2560.0},
    },
    "ratios_to_direct": {
        "direct": {"throughput": 1.0, "p50": 1.0},
        "shared": {"throughput": 0.766, "p50": 1.253},
        "haproxy": {"throughput": 0.544, "p50": 2.813},
    },
    "dropped_share": {"h1": 0.606},
    "dropped_per_second": {"h1": 17982},
    "takeover_link_s": [0.7, 0.63, 0.6],
    "takeover_summary": {"median": 0.63, "max": 0.7, "min": 0.6},
}


def test_the_cluster_figures_are_in_the_report_from_their_result_file():
    text = report.benchmarks_markdown(
        run_info(),
        {},
        {},
        [("bench/results/cluster.json", "written by `python3 bench/cluster.py`")],
        {"cluster": CLUSTER},
    )
    assert "## 4. Load sharing across hosts: the shared address against HAProxy" in text
    assert "(bench/cluster.py, not in the default run), measured 2026-12-07 22:30 UTC:" in text
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and "three hosts" in line
    ]
    assert rows == [
        ["the shared address, three hosts", "29,814", "1.14 ms", "x0.77", "x1.25"],
        ["HAProxy in front of the three hosts", "21,151", "2.56 ms", "x0.54", "x2.81"],
    ]
    assert "Takeover after a host's link is cut (3 tries): median 0.63 s, min 0.6 s, max 0.7 s," in text
    assert "h1 17,982 packets/s (61% of what reached it)." in text
    assert "- `bench/results/cluster.json`: written by `python3 bench/cluster.py`" in text
    # A result file of an older shape is listed, without a section.
    older = report.benchmarks_markdown(run_info(), {}, {}, [], {"cluster": {"runs": {}}})
    assert "## 4." not in older


def dual_stack_results() -> dict:
    results = datapath_results(PINNED)
    results["summary"]["host"] |= {"direct6": path_figures(36000, 1.0), "dnat6": path_figures(34200, 0.95)}
    results["summary"]["outside"] |= {"direct6": path_figures(30000, 1.0), "dnat6-nft": path_figures(29700, 0.99)}
    results["pinned"] = {
        **PINNED,
        "summary": {"host": {**PINNED["summary"]["host"], "direct6": path_figures(27000, 1.0)}},
    }
    return results


def test_ipv6_rows_stand_beside_the_ipv4_ones_each_against_direct_of_its_own_family():
    results = dual_stack_results()
    text = tables.families_table(results["summary"], results["pinned"]["summary"], ("host", "outside"))
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in text.splitlines()]
    assert rows[0] == [
        "client",
        "rounds",
        "IPv4 DNAT / direct",
        "IPv6 DNAT / direct6",
        "IPv4 nftables / direct",
        "IPv6 nftables / direct6",
        "direct6 / direct",
    ]
    assert rows[2:] == [
        ["host", "unpinned", "x0.95", "x0.95", "-", "-", "x0.90"],
        ["outside", "unpinned", "x0.97", "-", "-", "x0.99", "x0.83"],
        ["host", "pinned", "x0.98", "-", "-", "-", "x0.90"],
    ]
    host = tables.datapath_table(results["summary"], "host").splitlines()
    assert [row.split("|")[1].strip() for row in host[-2:]] == [
        "IPv6: direct to the container's IPv6 address",
        "IPv6: deployer external port (DNAT)",
    ]


def test_the_report_has_an_ipv6_section_only_for_a_dual_stack_run():
    markdown = report.benchmarks_markdown(run_info(), {"datapath": dual_stack_results()}, {})
    assert "### IPv6 beside IPv4" in markdown and "| IPv4 DNAT / direct | IPv6 DNAT / direct6 |" in markdown
    terminal = report.terminal_report(run_info(), {"datapath": dual_stack_results()})
    assert "Data path, IPv6 beside IPv4 (throughput ratios)" in terminal
    ipv4_only = report.benchmarks_markdown(run_info(), {"datapath": datapath_results(PINNED)}, {})
    assert "IPv6" not in ipv4_only
    assert tables.families_table(datapath_results(PINNED)["summary"], None, ("host", "outside")) == ""
