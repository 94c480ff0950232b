"""PNG plots of a run's results, with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.plan import CLIENTS, DATAPATHS, SCENARIOS
from bench.tables import SCENARIO_LABELS

BAR_LABELS = {
    "direct": "direct",
    "dnat": "DNAT\n(deployer)",
    "dnat-addr": "DNAT via a\nlocal address",
    "nft": "DNAT\n(nftables)",
    "nft-addr": "nftables via a\nlocal address",
    "split": "canary split\n(50%)",
    "haproxy": "HAProxy",
    "nginx": "nginx",
    "docker": "Docker\npublished port",
    "direct6": "IPv6\ndirect",
    "dnat6": "IPv6 DNAT\n(deployer)",
    "dnat6-nft": "IPv6 DNAT\n(nftables)",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def datapath_plot(datapath: Mapping[str, Any], path: Path) -> None:
    plt = _pyplot()
    summary = datapath["summary"]
    fig, (rps_ax, lat_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.38
    colours = {"host": "#4c72b0", "outside": "#dd8452"}
    for offset, client in zip((-width / 2, width / 2), CLIENTS):
        entries = [summary.get(client, {}).get(p, {}) for p in DATAPATHS]
        xs = [i + offset for i in range(len(DATAPATHS))]
        rps = [e.get("rps") or 0 for e in entries]  # 0: a path this client has not
        bars = rps_ax.bar(xs, rps, width, label=client, color=colours[client])
        for bar, entry in zip(bars, entries):
            if entry.get("rps_ratio") is not None:
                rps_ax.annotate(
                    f"x{entry['rps_ratio']:.2f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        lat_ax.bar(xs, [e.get("p50_ms") or 0 for e in entries], width, label=f"{client} p50", color=colours[client])
        lat_ax.scatter(
            xs,
            [e.get("p99_ms") or 0 for e in entries],
            marker="_",
            s=200,
            color="black",
            label="p99" if client == "host" else None,
            zorder=3,
        )
    labels = [BAR_LABELS[p] for p in DATAPATHS]
    for ax in (rps_ax, lat_ax):
        ax.set_xticks(range(len(DATAPATHS)), labels, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    rps_ax.set_ylabel("requests/s (median of rounds)")
    rps_ax.set_title("Throughput (label: ratio to direct)")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_yscale("log")
    lat_ax.set_title("Latency: p50 bars, p99 ticks")
    s = datapath["settings"]
    fig.suptitle(
        f"Data path: wrk -t{s['threads']} -c{s['connections']} -d{s['seconds']:g}s, {s['rounds']} interleaved rounds, unpinned",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def deploys_plot(deploys: Mapping[str, Any], path: Path) -> None:
    plt = _pyplot()
    scenarios = [s for s in SCENARIOS if s in deploys["scenarios"]]
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(15, 2.8 * len(scenarios)), squeeze=False)
    for ax, name in zip(axes[:, 0], scenarios):
        scenario = deploys["scenarios"][name]
        line = scenario["timeline"]
        t = line["t"]
        for start, end in line["switches"]:
            ax.axvspan(start, max(end, start + 0.05), color="#2ca02c", alpha=0.25, lw=0)
            ax.axvline(end, color="#2ca02c", lw=0.6, alpha=0.7)
        # A bin without an answered request is a gap in the line, not a slope across an outage.
        ax.plot(t, _gaps(line["http_max_ms"]), lw=0.7, color="#4c72b0", label="HTTP worst per 100 ms")
        ax.plot(t, _gaps(line["http_p50_ms"]), lw=0.7, color="#8c8c8c", label="HTTP median per 100 ms")
        top = 5000.0
        marks = [
            ("http_failed", "x", "#d62728", "failed requests"),
            ("udp_lost", "v", "#ff7f0e", "unanswered datagrams"),
            ("udp_stale", "D", "#9467bd", "datagrams answered by an old release"),
        ]
        for key, marker, colour, label in marks:
            xs = [x for x, n in zip(t, line[key]) if n]
            if xs:
                ax.scatter(
                    xs,
                    [top * {"http_failed": 1.0, "udp_lost": 0.55, "udp_stale": 0.3}[key]] * len(xs),
                    marker=marker,
                    color=colour,
                    s=18,
                    label=f"{label} ({sum(line[key])})",
                    zorder=3,
                )
        ax.set_yscale("log")
        ax.set_ylim(0.1, top * 1.6)
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3)
        ax.set_title(
            f"{SCENARIO_LABELS.get(name, name)}: {scenario['failed_requests']} failed of "
            f"{scenario['requests']:,} requests, {scenario['udp_unanswered']} unanswered and "
            f"{scenario['udp_stale_answers']} stale of {scenario['udp_sent']:,} datagrams "
            f"(green: switches)",
            fontsize=9,
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    axes[-1, 0].set_xlabel("seconds since the load started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _gaps(values: list[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def scale_plot(scale: Mapping[str, Any], path: Path) -> None:
    plt = _pyplot()
    points = scale["summary"]["points"]
    xs = [p["other_apps"] for p in points]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key, label, colour in (
        ("floor_ms", "floor (bare iptables-restore)", "#55a868"),
        ("committed_ms", "flip commit (add-only restore)", "#4c72b0"),
        ("flip_step_ms", "whole flip step", "#dd8452"),
    ):
        if key not in points[0]:
            continue
        medians = [p[key]["median"] for p in points]
        p95 = [p[key]["p95"] for p in points]
        ax.plot(xs, medians, marker="o", color=colour, label=f"{label}, median")
        ax.plot(xs, p95, marker=".", ls="--", color=colour, alpha=0.6, label=f"{label}, p95")
    ax.axhline(10, color="#d62728", lw=0.8, ls=":", label="target: 10 ms")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("other apps with rules installed")
    ax.set_ylabel("ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Flip time of one app against the number of other apps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
