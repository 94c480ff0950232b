"""The bench's tables, as Markdown pipe tables (readable in a terminal and in BENCHMARKS.md). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.plan import DATAPATHS, SCENARIOS

PATH_LABELS = {
    "direct": "direct to the container",
    "dnat": "deployer external port (DNAT)",
    "dnat-addr": "DNAT via a local non-loopback address",
    "nft": "deployer external port, nftables backend",
    "nft-addr": "nftables backend via a local non-loopback address",
    "split": "canary split, 50% (statistic match + DNAT)",
    "haproxy": "HAProxy (http mode)",
    "nginx": "nginx reverse proxy",
    "docker": "Docker published port",
    "direct6": "IPv6: direct to the container's IPv6 address",
    "dnat6": "IPv6: deployer external port (DNAT)",
    "dnat6-nft": "IPv6: deployer external port, nftables backend",
}
# The families side by side: (column, path, its direct). Each ratio is the median of per-round ratios.
FAMILY_COLUMNS = (
    ("IPv4 DNAT / direct", "dnat", "direct"),
    ("IPv6 DNAT / direct6", "dnat6", "direct6"),
    ("IPv4 nftables / direct", "nft", "direct"),
    ("IPv6 nftables / direct6", "dnat6-nft", "direct6"),
)
SCENARIO_LABELS = {
    "ours": "deployer (ours)",
    "seed": "seed recipe: iptables -A/-D, conntrack flush",
    "stop-start": "stop-then-start on the same port",
    "naive": "naive swap, no UDP conntrack cleanup",
}
STEP_ORDER = ("pull", "start", "health", "flip", "record", "conntrack", "tidy", "drain", "stop")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A pipe table with padded columns; `align` has one 'l' or 'r' per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + (":" if a == "r" else "-") for w, a in zip(widths, align)) + " |"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} µs"
    if value < 100:
        return f"{value:.2f} ms".replace(".00 ms", " ms")
    return f"{value:,.0f} ms"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"x{value:.2f}"


def count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def datapath_table(
    summary: Mapping[str, Mapping[str, Any]], client: str, pinned: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    """One client's paths: the unpinned rounds' figures, and beside them the pinned rounds' (when `pinned`, the
    pinned rounds' summary, is given). Every ratio is to the direct path of the same set of rounds."""
    ours, theirs = summary.get(client, {}), (pinned or {}).get(client, {})
    rows = []
    for path in DATAPATHS:
        entry, pin = ours.get(path), theirs.get(path)
        if not entry and not pin:
            continue
        entry = entry or {}
        row = [
            PATH_LABELS[path],
            count(entry.get("rps") and round(entry["rps"])),
            ms(entry.get("p50_ms")),
            ms(entry.get("p99_ms")),
            ratio(entry.get("rps_ratio")),
            ratio(entry.get("p50_ratio")),
            ratio(entry.get("p99_ratio")),
            count(entry.get("errors")),
        ]
        if pinned is not None:
            pin = pin or {}
            row += [
                count(pin.get("rps") and round(pin["rps"])),
                ratio(pin.get("rps_ratio")),
                ratio(pin.get("p50_ratio")),
                count(pin.get("errors")),
            ]
        rows.append(row)
    headers = [
        "path",
        "requests/s, unpinned",
        "p50, unpinned",
        "p99, unpinned",
        "req/s vs direct, unpinned",
        "p50 vs direct, unpinned",
        "p99 vs direct, unpinned",
        "errors, unpinned",
    ]
    if pinned is not None:
        headers += ["requests/s, pinned", "req/s vs direct, pinned", "p50 vs direct, pinned", "errors, pinned"]
    return table(headers, rows)


def families_table(
    summary: Mapping[str, Mapping[str, Any]],
    pinned: Mapping[str, Mapping[str, Any]] | None,
    clients: Sequence[str],
) -> str:
    """IPv6 beside IPv4: each family's DNAT throughput as a ratio to direct of its own family, per client and set
    of rounds, and IPv6 direct's throughput against IPv4 direct's (a ratio of medians, for scale only)."""
    rows = []
    for rounds, figures in (("unpinned", summary), ("pinned", pinned or {})):
        for client in clients:
            paths = figures.get(client, {})
            if "direct6" not in paths:
                continue
            v4, v6 = paths.get("direct", {}).get("rps"), paths["direct6"].get("rps")
            rows.append(
                [
                    client,
                    rounds,
                    *(ratio(paths.get(path, {}).get("rps_ratio")) for _, path, _ in FAMILY_COLUMNS),
                    ratio(round(v6 / v4, 3) if v4 and v6 else None),
                ]
            )
    headers = ["client", "rounds", *(column for column, _, _ in FAMILY_COLUMNS), "direct6 / direct"]
    return table(headers, rows) if rows else ""


def deploys_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for name in _ordered(scenarios):
        s = scenarios[name]
        rows.append(
            [
                SCENARIO_LABELS.get(name, name),
                s["deploys"],
                count(s["requests"]),
                count(s["failed_requests"]),
                count(s["udp_sent"]),
                count(s["udp_unanswered"]),
                count(s["udp_stale_answers"]),
                ms(s["worst_latency_around_switch_ms"]),
            ]
        )
    return table(
        [
            "scenario",
            "deploys",
            "HTTP requests",
            "failed",
            "UDP sent",
            "UDP unanswered",
            "UDP answered by an old release",
            "worst latency around a switch",
        ],
        rows,
    )


def switch_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for name in _ordered(scenarios):
        s = scenarios[name]
        flip = s["flip"]
        rows.append(
            [
                SCENARIO_LABELS.get(name, name),
                ms(flip["committed_ms"]["median"]),
                ms(flip["committed_ms"]["p95"]),
                ms(flip.get("healthy_to_committed_ms", {}).get("median")),
                ms(flip["step_ms"]["median"]),
                ms(flip["healthy_to_flip_done_ms"]["median"]),
                ms(s["switch_ms"]["median"]),
                ms(s["deploy_ms"]["median"]),
            ]
        )
    return table(
        [
            "scenario",
            "commit (median)",
            "commit p95",
            "healthy -> committed (median)",
            "flip step (median)",
            "healthy -> flip step done",
            "switch window (median)",
            "deploy (median)",
        ],
        rows,
    )


def steps_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    present = [s for s in STEP_ORDER if any(s in sc["steps_ms"] for sc in scenarios.values())]
    extra = sorted({s for sc in scenarios.values() for s in sc["steps_ms"]} - set(STEP_ORDER))
    columns = present + extra
    rows = [
        [
            SCENARIO_LABELS.get(name, name),
            *(ms(scenarios[name]["steps_ms"].get(step)) for step in columns),
            ms(scenarios[name]["deploy_ms"]["median"]),
        ]
        for name in _ordered(scenarios)
    ]
    return table(["scenario (median ms per step)", *columns, "whole deploy"], rows)


def clients_table(scenarios: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for name in _ordered(scenarios):
        for client, c in scenarios[name]["clients"].items():
            if "requests" in c:
                errors = "; ".join(f"{n}x {kind}" for kind, n in c["errors"].items()) or "-"
                rows.append(
                    [
                        name,
                        client,
                        count(c["requests"]),
                        count(c["failed"]),
                        ms(c["p50_ms"]),
                        ms(c["p99_ms"]),
                        ms(c["worst_around_switch_ms"]),
                        errors,
                    ]
                )
            else:
                rows.append(
                    [
                        name,
                        client,
                        count(c["sent"]),
                        count(c["unanswered"]),
                        "-",
                        "-",
                        "-",
                        f"{c['stale_answers']} answered by an old release; longest silence {c['longest_silence_s']} s",
                    ]
                )
    return table(
        ["scenario", "client", "requests", "failed", "p50", "p99", "worst around a switch", "what failed"],
        rows,
        align="llrrrrrl",
    )


def scale_table(summary: Mapping[str, Any]) -> str:
    rows = [
        [
            count(p["other_apps"]),
            ms(p["install_ms"]),
            ms(p.get("floor_ms", {}).get("median")),
            ms(p["committed_ms"]["median"]),
            ms(p["committed_ms"]["p95"]),
            ms(p["flip_step_ms"]["median"]),
            ms(p["flip_step_ms"]["p95"]),
            ms(p["deploy_ms"]["median"]),
            p["committed_ms"]["n"],
        ]
        for p in summary["points"]
    ]
    return table(
        [
            "other apps",
            "installing their rules",
            "floor (median)",
            "flip commit (median)",
            "commit p95",
            "flip step (median)",
            "flip step p95",
            "whole deploy (median)",
            "flips",
        ],
        rows,
    )


def nft_scale_table(summary: Mapping[str, Any]) -> str:
    none = {"median": None, "p95": None}
    rows = [
        [
            count(p["other_apps"]),
            ms(p["committed_ms"]["median"]),
            ms(p["committed_ms"]["p95"]),
            ms(p.get("backend_committed_ms", none)["median"]),
            ms(p.get("backend_committed_ms", none)["p95"]),
            ms(p.get("backend_step_ms", none)["median"]),
            p["committed_ms"]["n"],
        ]
        for p in summary["points"]
    ]
    return table(
        [
            "other apps",
            "floor: element replace (median)",
            "floor p95",
            "backend flip commit (median)",
            "backend commit p95",
            "backend flip step (median)",
            "flips",
        ],
        rows,
    )


def targets_table(found: Sequence[Mapping[str, Any]]) -> str:
    return table(
        ["target", "met", "figure"],
        [[t["target"], {True: "yes", False: "NO", None: "-"}[t["met"]], t["detail"]] for t in found],
        align="lll",
    )


def _ordered(scenarios: Mapping[str, Any]) -> list[str]:
    return [s for s in SCENARIOS if s in scenarios] + [s for s in scenarios if s not in SCENARIOS]
