"""From raw records and journal events to the reported figures."""

from __future__ import annotations

import pytest

from bench import analysis


def step(name: str, end: float, ms: float, **extra) -> dict:
    return {"event": "step", "step": name, "outcome": "ok", "wall": end, "duration_ms": ms, **extra}


def test_percentiles_interpolate_and_summaries_round():
    assert analysis.percentile([1, 2, 3, 4], 50) == 2.5
    assert analysis.percentile([10], 95) == 10 and analysis.percentile([], 50) is None
    assert analysis.summary([1.0, 2.0, 3.0, 10.0]) == {"n": 4, "median": 2.5, "p95": 8.95, "max": 10.0}
    assert analysis.summary([])["median"] is None


def test_datapath_ratios_are_medians_of_per_round_ratios():
    rounds = []
    for number, (direct, dnat) in enumerate([(100.0, 98.0), (50.0, 51.0), (80.0, 40.0)]):
        rounds.append(
            {
                "round": number,
                "client": "host",
                "path": "direct",
                "rps": direct,
                "p50_ms": 1.0,
                "p99_ms": 2.0,
                "errors": 0,
            }
        )
        rounds.append(
            {"round": number, "client": "host", "path": "dnat", "rps": dnat, "p50_ms": 1.1, "p99_ms": 2.0, "errors": 1}
        )
    rounds.append({"round": 3, "client": "host", "path": "dnat", "rps": None, "error": "wrk failed"})
    summary = analysis.datapath_summary(rounds)["host"]
    assert summary["direct"]["rps_ratio"] == 1.0
    assert summary["dnat"] == {
        "rounds": 3,
        "failed_rounds": 1,
        "rps": 51.0,
        "p50_ms": 1.1,
        "p99_ms": 2.0,
        "errors": 3,
        "rps_ratio": 0.98,
        "p50_ratio": 1.1,
        "p99_ratio": 1.0,
    }


def test_ipv6_paths_are_ratios_to_ipv6_direct_of_the_same_round_and_ipv4_paths_to_ipv4_direct():
    figures = {"direct": (100.0, 80.0), "dnat": (95.0, 76.0), "direct6": (90.0, 60.0), "dnat6": (81.0, 60.0)}
    rounds = [
        {"round": n, "client": "outside", "path": path, "rps": rps[n], "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}
        for path, rps in figures.items()
        for n in range(2)
    ]
    summary = analysis.datapath_summary(rounds)["outside"]
    assert {path: summary[path]["rps_ratio"] for path in figures} == {
        "direct": 1.0,
        "dnat": 0.95,
        "direct6": 1.0,
        "dnat6": 0.95,  # median of 0.9 and 1.0, each to direct6, not to IPv4 direct
    }


def test_ipv6_dnat_has_targets_of_its_own_in_both_kinds_of_rounds():
    datapath = {
        "summary": {"host": {"dnat6": {"rps_ratio": 0.96, "p50_ratio": 1.02}}},
        "pinned": {
            "load_cpu": 0,
            "backend_cpu": 1,
            "summary": {"outside": {"dnat6": {"rps_ratio": 0.98, "p50_ratio": 1.0}}},
        },
    }
    found = analysis.datapath_targets(datapath)
    assert [(t["target"], t["met"], t["detail"]) for t in found] == [
        (
            "DNAT within 5% of direct (host, IPv6, against IPv6 direct; unpinned rounds): throughput and p50",
            True,
            "throughput x0.96, p50 x1.02",
        ),
        (
            "DNAT at least x0.97 of direct throughput (outside, IPv6, against IPv6 direct; pinned rounds)",
            True,
            "throughput x0.98, p50 x1.0 (wrk on CPU 0, the container on CPU 1)",
        ),
    ]


def test_switch_intervals_of_a_flip_and_of_stop_then_start():
    events = [
        step("flip", 5.0, 100),
        step("health", 9.0, 50),
        step("stop", 11.0, 500),
        step("pull", 11.5, 10),
        step("health", 13.0, 800),
        step("flip", 20.0, 40),
    ]
    assert analysis.switch_intervals(events, "flip", "flip", since=0) == [(4.9, 5.0), (19.96, 20.0)]
    assert analysis.switch_intervals(events, "stop", "health", since=6) == [(10.5, 13.0)]


def test_live_tag_counts_completed_switches():
    assert [analysis.live_tag(t, ["v1", "v2", "v3"], [10.0, 20.0]) for t in (5, 10, 15, 25)] == ["v1", "v2", "v2", "v3"]


def test_a_datagram_is_stale_only_when_an_older_release_answers_well_after_the_switch():
    tags, ends = ["v1", "v2", "v3"], [10.0, 20.0]

    def datagram(t: float, version: str | None) -> dict:
        return {"kind": "udp", "t": t, "answered": version is not None, "version": version}

    assert analysis.is_stale(datagram(10.5, "v1"), tags, ends)
    assert not analysis.is_stale(datagram(10.1, "v1"), tags, ends), "within the grace, before the cleanup"
    assert not analysis.is_stale(datagram(19.9, "v3"), tags, ends), "a newer release during its own switch"
    assert not analysis.is_stale(datagram(5.0, "v1"), tags, ends)
    assert not analysis.is_stale(datagram(12.0, None), tags, ends)
    summary = analysis.udp_client(
        [datagram(9.0, "v1"), datagram(10.5, "v1"), datagram(11.0, None), datagram(11.5, None), datagram(12.0, "v2")],
        tags,
        [(9.9, 10.0), (19.9, 20.0)],
    )
    assert summary["sent"] == 5 and summary["unanswered"] == 2 and summary["stale_answers"] == 1
    assert summary["longest_silence_s"] == 1.0
    assert summary["stale_examples"] == [{"from_switch_s": 0.5, "live": "v2", "version": "v1"}]


def test_http_figures_and_the_worst_latency_around_a_switch():
    records = [
        {"kind": "http-new", "conn": 1, "t": 1.0, "t_end": 1.002, "ok": True},
        {"kind": "http-new", "conn": 2, "t": 9.8, "t_end": 9.9, "ok": True},  # around the switch at 10
        {
            "kind": "http-new",
            "conn": 3,
            "t": 10.2,
            "t_end": 10.2,
            "ok": False,
            "error": "ConnectionRefusedError: [Errno 111] Connection refused",
        },
        {"kind": "http-new", "conn": 4, "t": 30.0, "t_end": 30.5, "ok": True},  # slow, but far from it
    ]
    figures = analysis.http_client(records, [(9.99, 10.0)])
    assert figures["requests"] == 4 and figures["failed"] == 1
    assert figures["worst_around_switch_ms"] == pytest.approx(100.0) and figures["worst_ms"] == pytest.approx(500.0)
    assert figures["errors"] == {"ConnectionRefusedError: [Errno 111] Connection refused": 1}
    assert figures["failed_examples"] == [{"from_switch_s": 0.2, "error": records[2]["error"]}]


def test_a_scenario_summary_lines_up_steps_records_and_deploys():
    events = [
        {"event": "deploy.started", "wall": 1.0},
        step("pull", 1.1, 100),
        step("health", 1.5, 300),
        {"event": "netfilter.write", "wall": 1.52},
        {"event": "netfilter.write", "wall": 1.54},
        step("flip", 1.55, 50, committed_ms=3.0),
        step("drain", 2.5, 900),
        {"event": "deploy.finished", "wall": 3.0},
    ]
    records = {
        "host-new": [
            {"kind": "http-new", "conn": 1, "t": 1.2, "t_end": 1.21, "ok": True, "version": "v1"},
            {"kind": "http-new", "conn": 2, "t": 2.0, "t_end": 2.01, "ok": True, "version": "v2"},
        ],
        "host-udp": [{"kind": "udp", "t": 2.0, "answered": True, "version": "v2"}],
    }
    summary = analysis.scenario_summary(
        events, records, tags=["v1", "v2"], load_start=0.5, switch_steps=("flip", "flip")
    )
    assert (summary["deploys"], summary["switches"], summary["requests"], summary["failed_requests"]) == (1, 1, 2, 0)
    assert summary["udp_sent"] == 1 and summary["udp_stale_answers"] == 0
    assert summary["flip"]["committed_ms"]["median"] == 3.0 and summary["flip"]["step_ms"]["median"] == 50
    assert summary["flip"]["healthy_to_flip_done_ms"]["median"] == pytest.approx(50.0)
    assert summary["flip"]["healthy_to_committed_ms"]["median"] == pytest.approx(20.0), "the first write in the flip"
    assert summary["steps_ms"] == {"pull": 100, "health": 300, "flip": 50, "drain": 900}
    assert summary["deploy_ms"]["median"] == 2000
    assert summary["timeline"]["switches"] == [[1.0, 1.05]]
    assert summary["timeline"]["t"] == [0.7, 1.5]


def test_scale_is_flat_within_a_factor_or_a_slack():
    def point(n: int, commit: float) -> dict:
        return {
            "other_apps": n,
            "install_ms": 1.0,
            "committed_ms": [commit] * 3,
            "flip_step_ms": [30.0],
            "deploy_ms": [900.0],
        }

    flat = analysis.scale_summary([point(1, 4.0), point(1000, 5.9)])
    assert flat["flat"] and flat["largest_over_smallest"] == 1.48
    assert analysis.scale_summary([point(1, 1.0), point(1000, 2.9)])["flat"], "within 2 ms"
    assert not analysis.scale_summary([point(1, 4.0), point(1000, 12.0)])["flat"]


def test_scale_reads_the_commit_against_the_floor_and_the_step_against_the_commit():
    def point(n: int, commit: float, step: float, floor: float) -> dict:
        return {
            "other_apps": n,
            "install_ms": 1.0,
            "committed_ms": [commit] * 3,
            "flip_step_ms": [step] * 3,
            "deploy_ms": [900.0],
            "floor_ms": [floor] * 3,
        }

    summary = analysis.scale_summary([point(1, 3.0, 8.0, 2.5), point(1000, 3.0, 8.0, 2.5)])
    assert (summary["commit_over_floor"], summary["step_over_commit"]) == (1.2, 2.67)
    assert summary["points"][0]["floor_ms"]["median"] == 2.5
    found = {t["target"]: t for t in analysis.targets(None, None, {"summary": summary}, duration_s=60, quick=True)}
    assert found["flip commit within 1.5x the floor (bare iptables-restore)"]["met"]
    assert found["whole flip step within 3.0x the commit"]["detail"] == (
        "median flip step / median commit, all points: x2.67"
    )
    slow = analysis.scale_summary([point(1, 6.0, 20.0, 2.5)])
    found = {t["target"]: t["met"] for t in analysis.targets(None, None, {"summary": slow}, duration_s=60, quick=True)}
    assert not found["flip commit within 1.5x the floor (bare iptables-restore)"]
    assert not found["whole flip step within 3.0x the commit"]


def test_the_nftables_flip_is_judged_by_its_worst_median_and_its_flatness():
    def point(n: int, commit: float, backend: float) -> dict:
        return {
            "other_apps": n,
            "committed_ms": [commit] * 3,
            "backend_committed_ms": [backend] * 3,
            "backend_step_ms": [backend * 2] * 3,
        }

    flat = analysis.nft_scale_summary([point(1, 0.2, 0.5), point(10000, 0.25, 0.6)])
    assert (flat["flat"], flat["largest_over_smallest"], flat["worst_median_ms"]) == (True, 1.25, 0.25)
    assert (flat["backend_flat"], flat["backend_largest_over_smallest"], flat["backend_worst_median_ms"]) == (
        True,
        1.2,
        0.6,
    )
    steep = {
        "summary": analysis.scale_summary([]),
        "nftables": {"summary": analysis.nft_scale_summary([point(1, 0.2, 0.5), point(10000, 1.2, 0.55)])},
    }
    found = {t["target"]: t["met"] for t in analysis.targets(None, None, steep, duration_s=60, quick=True)}
    assert not found["nftables floor (a bare element replace) commit median within 1 ms at every point"]
    assert not found["nftables floor (a bare element replace) flat (within 1.3x) from 1 to 10,000 other apps"]
    assert found["nftables backend flip commit median within 1 ms at every point"]
    assert found["nftables backend flip flat (within 1.3x) from 1 to 10,000 other apps"]


def test_targets_say_met_or_not_with_their_figure():
    datapath = {
        "summary": {
            "host": {"dnat": {"rps_ratio": 0.97, "p50_ratio": 1.02}},
            "outside": {"dnat": {"rps_ratio": 0.90, "p50_ratio": 1.0}},
        }
    }
    scenario = {
        "failed_requests": 0,
        "requests": 100,
        "deploys": 2,
        "udp_unanswered": 0,
        "udp_sent": 50,
        "udp_stale_answers": 0,
        "flip": {"committed_ms": {"median": 4.0}, "step_ms": {"median": 30.0}},
    }
    deploys = {"scenarios": {"ours": scenario, "seed": {**scenario, "failed_requests": 3}, "naive": scenario}}
    found = analysis.targets(
        datapath, deploys, {"summary": {"flat": True, "largest_over_smallest": 1.1}}, duration_s=700, quick=False
    )
    verdicts = {t["target"]: t["met"] for t in found}
    assert verdicts == {
        "DNAT within 5% of direct (host; unpinned rounds): throughput and p50": True,
        "DNAT within 5% of direct (outside; unpinned rounds): throughput and p50": False,
        "0 failed requests across all deploys (ours)": True,
        "flip under 10 ms at the median (rules committed)": True,
        "baseline seed shows its failures": True,
        "baseline naive shows its failures": False,
        "flip time flat across 1 to 1,000 other apps": True,
        "full run under 15 min": True,
    }


def test_pinned_rounds_have_targets_of_their_own_against_their_own_direct():
    datapath = {
        "summary": {"host": {"dnat": {"rps_ratio": 0.93, "p50_ratio": 1.08}}},
        "pinned": {
            "load_cpu": 0,
            "backend_cpu": 1,
            "summary": {
                "host": {"dnat": {"rps_ratio": 0.975, "p50_ratio": 1.01}, "haproxy": {"rps_ratio": 0.5}},
                "outside": {"dnat": {"rps_ratio": 0.96, "p50_ratio": 1.0}},
            },
        },
    }
    found = analysis.datapath_targets(datapath)
    assert [(t["target"], t["met"]) for t in found] == [
        ("DNAT within 5% of direct (host; unpinned rounds): throughput and p50", False),
        ("DNAT at least x0.97 of direct throughput (host; pinned rounds)", True),
        ("DNAT at least x0.97 of direct throughput (outside; pinned rounds)", False),
    ]
    assert found[1]["detail"] == "throughput x0.975, p50 x1.01 (wrk on CPU 0, the container on CPU 1)"
    skipped = {**datapath, "pinned": {"skipped": "one core only (CPU 0): wrk and the container cannot be kept apart"}}
    assert [t["target"] for t in analysis.datapath_targets(skipped)] == [found[0]["target"]]


def test_the_run_length_is_judged_only_for_a_run_of_every_part():
    (whole,) = analysis.targets(None, None, None, duration_s=840, quick=False)
    assert (whole["met"], whole["detail"]) == (True, "14.0 min")
    (part,) = analysis.targets(None, None, None, duration_s=600, quick=False, ran=["datapath"])
    assert part["met"] is None
    assert part["detail"] == "not measured: the last run measured datapath only, in 10.0 min"
