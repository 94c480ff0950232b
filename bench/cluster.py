"""The cluster part of the bench: the shared address across three hosts against HAProxy in front of the same hosts.

    sudo bench/run --only cluster            # about 3 minutes: bench/results/cluster.json and cluster.png
    sudo python3 -m bench.cluster --results /tmp/r --seconds 5 --rounds 3 --tries 10

Not part of the default run or the CI smoke: it builds three hosts with a dockerd each (tests/support/cluster_bed.py).
Side by side, in one run, from the bed's client (wrk, one thread, 64 keep-alive connections spread over the client's
64 source addresses by SNAT rules of the client's own):

- direct: one host, by its own address (the app's nat chain only; the cluster chain never sees it);
- shared: the shared address, each connection answered by the host of its bucket;
- haproxy: HAProxy 2.6 (http mode, round robin) in the segment's namespace, in front of the three hosts;
- one host owning every bucket (the others' agents stopped): the cluster chain's cost on its own, against direct.

Then the takeover time after a host's link is cut (`--tries` times), and what dropping the other hosts' buckets
costs each host: the packets each host's chain dropped and their share of what reached it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support.cluster_bed import TCP_PORT, ClusterBed  # noqa: E402

DEFAULT_RESULTS = REPO / "bench" / "results"


def wrk(bed: ClusterBed, target: str, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            bed.client,
            "wrk",
            "-t1",
            "-c64",
            f"-d{seconds:g}s",
            "--latency",
            f"http://{target}:{TCP_PORT}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1.0, "ms": 1000.0, "s": 1e6}[p50.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {"rps": rps, "p50_us": float(p50.group(1)) * scale, "errors": errors.group(0) if errors else ""}


def spread_sources(bed: ClusterBed, on: bool) -> None:
    """Spread the client's new connections over its sources: nth-packet SNAT rules in a nat chain of its own."""
    n = len(bed.sources)
    lines = ["*nat", ":SPREAD - [0:0]"]
    if on:
        lines.append("-I POSTROUTING 1 -o c0 -p tcp --dport 80 -j SPREAD")
        lines += [
            f"-A SPREAD -m statistic --mode nth --every {n - i} --packet 0 -j SNAT --to-source {source}"
            for i, source in enumerate(bed.sources)
        ]
    else:
        lines += ["-D POSTROUTING -o c0 -p tcp --dport 80 -j SPREAD", "-X SPREAD"]
    subprocess.run(
        ["ip", "netns", "exec", bed.client, "iptables-restore", "--noflush"],
        input="\n".join([*lines, "COMMIT", ""]),
        text=True,
        check=True,
    )


def start_haproxy(bed: ClusterBed) -> tuple[subprocess.Popen, str]:
    front = str(list(bed.subnet.hosts())[253])  # the bridge's own address, in the segment's namespace
    config = bed.root / "haproxy.cfg"
    servers = "".join(f"    server {h.name} {h.address}:{TCP_PORT}\n" for h in bed.hosts)
    config.write_text(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend web
    bind {front}:{TCP_PORT}
    default_backend hosts
backend hosts
    balance roundrobin
{servers}""")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", bed.segment, "haproxy", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    return proc, front


def chain_counters(bed: ClusterBed) -> dict[str, dict[str, int]]:
    """Each host: the packets to the shared address that reached it (the jump from PREROUTING), and those its
    chain dropped (its last rule)."""
    counters = {}
    for host in bed.hosts:
        counts = {}
        for chain, key in (("PREROUTING", "entered"), ("DEPLOYER-CLUSTER", "dropped")):
            listing = host.sh("iptables", "-t", "mangle", "-L", chain, "-v", "-x", "-n").stdout
            rows = [line.split() for line in listing.splitlines()[2:] if line.strip()]
            row = next(r for r in rows if "DEPLOYER-CLUSTER" in r) if key == "entered" else rows[-1]
            counts[key] = int(row[0])
        counters[host.name] = counts
    return counters


def measure(seconds: float, rounds: int, tries: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "seconds": seconds,
        "rounds": rounds,
        "runs": {"direct": [], "shared": [], "haproxy": [], "one_host": []},
    }
    with ClusterBed() as bed:
        bed.start()
        haproxy, front = start_haproxy(bed)
        spread_sources(bed, True)
        try:
            h1 = bed.host("h1")
            for _ in range(rounds):
                results["runs"]["direct"].append(wrk(bed, h1.address, seconds))
                before = chain_counters(bed)
                results["runs"]["shared"].append(wrk(bed, bed.address, seconds))
                after = chain_counters(bed)
                results.setdefault("drops", []).append(
                    {
                        name: {key: after[name][key] - before[name][key] for key in ("entered", "dropped")}
                        for name in after
                    }
                )
                results["runs"]["haproxy"].append(wrk(bed, front, seconds))
            for other in bed.hosts[1:]:
                bed.stop_agent(other)
            bed.wait_for(lambda: len(h1.owned()) == 6, 10, "h1 owning every bucket")
            for _ in range(rounds):
                results["runs"]["one_host"].append(wrk(bed, bed.address, seconds))
            for other in bed.hosts[1:]:
                bed.start_agent(other)
            bed.wait_for(bed.all_buckets_home, 30, "every bucket home again")
        finally:
            spread_sources(bed, False)
            haproxy.terminate()
            haproxy.wait(10)
        results["takeover_link_s"] = [bed.takeover(bed.hosts[i % 3], "link") for i in range(tries)]
    return summarize(results)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    medians = {
        path: {"rps": statistics.median(r["rps"] for r in runs), "p50_us": statistics.median(r["p50_us"] for r in runs)}
        for path, runs in results["runs"].items()
    }
    direct = medians["direct"]
    results["medians"] = medians
    results["ratios_to_direct"] = {
        path: {"throughput": round(m["rps"] / direct["rps"], 3), "p50": round(m["p50_us"] / direct["p50_us"], 3)}
        for path, m in medians.items()
    }
    drops = results.get("drops", [])
    results["dropped_share"] = {
        name: round(sum(d[name]["dropped"] for d in drops) / max(1, sum(d[name]["entered"] for d in drops)), 3)
        for name in (drops[0] if drops else {})
    }
    results["dropped_per_second"] = {
        name: round(sum(d[name]["dropped"] for d in drops) / (results["seconds"] * len(drops)))
        for name in (drops[0] if drops else {})
    }
    takeovers = results["takeover_link_s"]
    results["takeover_summary"] = {"median": statistics.median(takeovers), "max": max(takeovers), "min": min(takeovers)}
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    paths = ["direct", "shared", "haproxy", "one_host"]
    labels = ["direct\n(one host)", "shared address\n(3 hosts)", "HAProxy\n(3 hosts)", "shared address\n(1 host)"]
    ratios = results["ratios_to_direct"]
    x = range(len(paths))
    left.bar([i - 0.2 for i in x], [ratios[p]["throughput"] for p in paths], width=0.4, label="throughput")
    left.bar([i + 0.2 for i in x], [ratios[p]["p50"] for p in paths], width=0.4, label="p50 latency")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set_xticks(list(x), labels, fontsize=8)
    left.set_ylabel("ratio to direct")
    left.set_title("wrk, 64 connections over 64 sources")
    left.legend()
    takeovers = sorted(results["takeover_link_s"])
    right.plot(takeovers, [(i + 1) / len(takeovers) for i in range(len(takeovers))], marker="o")
    right.set_xlabel("seconds from the link cut to the last source served")
    right.set_ylabel("share of tries")
    right.set_title(f"takeover after a link cut ({len(takeovers)} tries)")
    right.set_xlim(0, max(2.0, max(takeovers) * 1.1))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run --only cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three paths, interleaved (default 3)")
    parser.add_argument("--tries", type=int, default=10, help="link cuts for the takeover times (default 10)")
    args = parser.parse_args(argv)
    measured_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = {"measured_at": measured_at, **measure(args.seconds, args.rounds, args.tries)}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "cluster.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.results / "cluster.png")
    print(
        json.dumps(
            {
                k: results[k]
                for k in ("medians", "ratios_to_direct", "dropped_share", "dropped_per_second", "takeover_summary")
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
