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
