"""Turn raw measurements into the figures the bench reports. Pure: data in, data out.

Inputs are what the acting parts collected: wrk results per round, the load clients' records
(one dict per request, see tests/support/traffic.py), and the journal's events, each with the
wall-clock `wall` at which the bench received it (a step event arrives when the step ends).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.plan import DNAT_TARGETS, PINNED_MIN_THROUGHPUT, baseline_of

Record = Mapping[str, Any]
Event = Mapping[str, Any]

# Requests that overlap [switch start - BEFORE, switch end + AFTER] count as "around a flip".
AROUND_BEFORE_S = 0.5
AROUND_AFTER_S = 1.0
# A datagram sent this long after a switch that is still answered by an old release is stuck there.
STICKY_GRACE_S = 0.25
BIN_S = 0.1
EXAMPLES = 5


# --- small statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), digits),
        "p95": round(percentile(values, 95), digits),
        "max": round(max(values), digits),
    }


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# --- data path -------------------------------------------------------------------------------------


def datapath_summary(rounds: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per client and path: medians over rounds, and the median of per-round ratios to the direct path of the
    path's own address family (`plan.baseline_of`: direct, or direct6 for an IPv6 path).

    Ratios are taken within a round (each path against direct measured moments before), so
    noise from other work on the machine, which changes slowly, cancels out better than in a
    ratio of medians.
    """
    ok = [r for r in rounds if r.get("rps") is not None]
    result: dict[str, dict[str, Any]] = {}
    for client in dict.fromkeys(r["client"] for r in rounds):
        paths = dict.fromkeys(r["path"] for r in rounds if r["client"] == client)
        result[client] = {}
        for path in paths:
            direct = {r["round"]: r for r in ok if r["client"] == client and r["path"] == baseline_of(path)}
            mine = [r for r in ok if r["client"] == client and r["path"] == path]
            entry: dict[str, Any] = {
                "rounds": len(mine),
                "failed_rounds": sum(
                    1 for r in rounds if r["client"] == client and r["path"] == path and r.get("rps") is None
                ),
                "rps": _round(_median(r["rps"] for r in mine), 0),
                "p50_ms": _round(_median(r["p50_ms"] for r in mine), 3),
                "p99_ms": _round(_median(r["p99_ms"] for r in mine), 3),
                "errors": sum(r.get("errors", 0) for r in mine),
            }
            for key in ("rps", "p50_ms", "p99_ms"):
                ratios = [
                    r[key] / direct[r["round"]][key] for r in mine if r["round"] in direct and direct[r["round"]][key]
                ]
                entry[f"{key.removesuffix('_ms')}_ratio"] = _round(_median(ratios), 3)
            result[client][path] = entry
    return result


# --- deploys under load ----------------------------------------------------------------------------


def step_span(event: Event) -> tuple[float, float]:
    """When a step ran, on the wall clock: it is reported at its end, with its duration."""
    return event["wall"] - event["duration_ms"] / 1000, event["wall"]


def steps(events: Sequence[Event], name: str | None = None, *, since: float = -math.inf) -> list[Event]:
    return [
        e
        for e in events
        if e.get("event") == "step"
        and e.get("outcome") == "ok"
        and (name is None or e["step"] == name)
        and e["wall"] >= since
    ]


def switch_intervals(events: Sequence[Event], first: str, last: str, *, since: float) -> list[tuple[float, float]]:
    """Per deploy after `since`: from the start of step `first` to the end of step `last`.

    For a flip that is the flip step itself; for stop-then-start it runs from the stop of the
    old container to the moment the new one answers, the time nothing serves.
    """
    intervals = []
    opened: float | None = None
    for event in steps(events, since=since):
        if event["step"] == first and opened is None:
            opened = step_span(event)[0]
        if event["step"] == last and opened is not None:
            intervals.append((opened, event["wall"]))
            opened = None
    return intervals


def live_tag(moment: float, tags: Sequence[str], switch_ends: Sequence[float]) -> str:
    """The release the traffic was meant to reach at `moment`: one more per completed switch."""
    return tags[min(sum(1 for end in switch_ends if end <= moment), len(tags) - 1)]


def _around(record: Record, switches: Sequence[tuple[float, float]]) -> bool:
    start, end = record["t"], record.get("t_end", record["t"])
    return any(start <= e + AROUND_AFTER_S and end >= s - AROUND_BEFORE_S for s, e in switches)


def _error_kind(record: Record) -> str:
    error = str(record.get("error") or f"HTTP {record.get('status')}")
    return error.split(" (", 1)[0][:80]


def http_client(records: Sequence[Record], switches: Sequence[tuple[float, float]]) -> dict[str, Any]:
    ok = [r for r in records if r.get("ok")]
    failed = [r for r in records if not r.get("ok")]
    latencies = [(r["t_end"] - r["t"]) * 1000 for r in ok]
    around = [(r["t_end"] - r["t"]) * 1000 for r in ok if _around(r, switches)]
    return {
        "requests": len(records),
        "failed": len(failed),
        "errors": dict(Counter(_error_kind(r) for r in failed).most_common(3)),
        "p50_ms": _round(percentile(latencies, 50), 2),
        "p99_ms": _round(percentile(latencies, 99), 2),
        "worst_ms": _round(max(latencies, default=None), 1),
        "worst_around_switch_ms": _round(max(around, default=None), 1),
        "connections": len({r.get("conn") for r in records}),
        "failed_examples": [_example(r, [e for _, e in switches]) for r in failed[:EXAMPLES]],
    }


def is_stale(record: Record, tags: Sequence[str], switch_ends: Sequence[float]) -> bool:
    """A datagram answered by a release older than the live one, sent well after the last switch."""
    before = [e for e in switch_ends if e <= record["t"]]
    if not record.get("answered") or not before or record["t"] - before[-1] < STICKY_GRACE_S:
        return False
    version, live = record.get("version"), live_tag(record["t"], tags, switch_ends)
    return version in tags and tags.index(version) < tags.index(live)


def udp_client(
    records: Sequence[Record], tags: Sequence[str], switches: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    ends = [e for _, e in switches]
    unanswered = [r for r in records if not r.get("answered")]
    stale = [r for r in records if is_stale(r, tags, ends)]
    return {
        "sent": len(records),
        "unanswered": len(unanswered),
        "stale_answers": len(stale),
        "longest_silence_s": _round(_longest_silence(records), 2),
        "stale_examples": [_example(r, ends, tags) for r in stale[:EXAMPLES]],
        "unanswered_examples": [_example(r, ends, tags) for r in unanswered[:EXAMPLES]],
    }


def _example(record: Record, ends: Sequence[float], tags: Sequence[str] = ()) -> dict[str, Any]:
    """Where a record falls: seconds from the nearest switch's end (negative: before it), and what answered."""
    nearest = min(ends, key=lambda e: abs(record["t"] - e), default=None)
    example: dict[str, Any] = {"from_switch_s": None if nearest is None else round(record["t"] - nearest, 3)}
    if tags:
        example["live"] = live_tag(record["t"], tags, ends)
    for key in ("version", "error"):
        if record.get(key):
            example[key] = record[key]
    return example


def _longest_silence(records: Sequence[Record]) -> float:
    """The longest stretch of consecutive unanswered datagrams, from the first sent to the next answer."""
    longest, began = 0.0, None
    for record in sorted(records, key=lambda r: r["t"]):
        if not record.get("answered"):
            began = record["t"] if began is None else began
        elif began is not None:
            longest, began = max(longest, record["t"] - began), None
    if began is not None and records:
        longest = max(longest, max(r["t"] for r in records) - began)
    return longest


def deploy_durations(events: Sequence[Event], *, since: float) -> list[float]:
    """Milliseconds from each deploy.started to its deploy.finished, after `since`."""
    started = [e["wall"] for e in events if e.get("event") == "deploy.started" and e["wall"] >= since]
    finished = [e["wall"] for e in events if e.get("event") == "deploy.finished" and e["wall"] >= since]
    return [(end - begin) * 1000 for begin, end in zip(started, finished)]


def step_medians(events: Sequence[Event], *, since: float) -> dict[str, float]:
    durations: dict[str, list[float]] = {}
    for event in steps(events, since=since):
        durations.setdefault(event["step"], []).append(event["duration_ms"])
    return {name: round(statistics.median(values), 1) for name, values in durations.items()}


def flip_figures(events: Sequence[Event], *, since: float) -> dict[str, Any]:
    """The flip step: its commit transaction, healthy -> rules committed, its whole duration.

    "Committed" is the end of the first rules write inside the flip step (`netfilter.write`
    events), and "healthy" the end of the health step before it.
    """
    flips = steps(events, "flip", since=since)
    writes = [e["wall"] for e in events if e.get("event") == "netfilter.write"]
    healthy_to_done, healthy_to_committed = [], []
    for flip in flips:
        health = [e for e in steps(events, "health", since=since) if e["wall"] <= flip["wall"]]
        if not health:
            continue
        healthy = health[-1]["wall"]
        healthy_to_done.append((flip["wall"] - healthy) * 1000)
        start, end = step_span(flip)
        committed = [w for w in writes if start - 0.001 <= w <= end + 0.001]
        if committed:
            healthy_to_committed.append((committed[0] - healthy) * 1000)
    return {
        "committed_ms": summary([e["committed_ms"] for e in flips if e.get("committed_ms") is not None]),
        "healthy_to_committed_ms": summary(healthy_to_committed),
        "step_ms": summary([e["duration_ms"] for e in flips]),
        "healthy_to_flip_done_ms": summary(healthy_to_done),
    }


def timeline(
    records: Mapping[str, Sequence[Record]],
    switches: Sequence[tuple[float, float]],
    *,
    start: float,
    tags: Sequence[str],
) -> dict[str, Any]:
    """Per BIN_S of the load: the worst and the median HTTP latency, failures, lost or stale datagrams."""
    bins: dict[int, dict[str, Any]] = {}
    ends = [e for _, e in switches]

    def slot(t: float) -> dict[str, Any]:
        return bins.setdefault(math.floor((t - start) / BIN_S + 1e-9), {"lat": [], "failed": 0, "lost": 0, "stale": 0})

    for client_records in records.values():
        for record in client_records:
            if record.get("kind") == "udp":
                if not record.get("answered"):
                    slot(record["t"])["lost"] += 1
                elif is_stale(record, tags, ends):
                    slot(record["t"])["stale"] += 1
            elif record.get("ok"):
                slot(record["t"])["lat"].append((record["t_end"] - record["t"]) * 1000)
            else:
                slot(record["t"])["failed"] += 1
    keys = sorted(k for k in bins if k >= 0)
    return {
        "bin_s": BIN_S,
        "t": [round(k * BIN_S, 2) for k in keys],
        "http_max_ms": [_round(max(bins[k]["lat"], default=None), 2) for k in keys],
        "http_p50_ms": [_round(_median(bins[k]["lat"]), 2) for k in keys],
        "http_failed": [bins[k]["failed"] for k in keys],
        "udp_lost": [bins[k]["lost"] for k in keys],
        "udp_stale": [bins[k]["stale"] for k in keys],
        "switches": [[round(s - start, 3), round(e - start, 3)] for s, e in switches],
    }


def scenario_summary(
    events: Sequence[Event],
    records: Mapping[str, Sequence[Record]],
    *,
    tags: Sequence[str],
    load_start: float,
    switch_steps: tuple[str, str],
) -> dict[str, Any]:
    """Everything reported for one scenario of the deploys-under-load part."""
    switches = switch_intervals(events, *switch_steps, since=load_start)
    clients: dict[str, Any] = {}
    for name, client_records in records.items():
        if any(r.get("kind") == "udp" for r in client_records):
            clients[name] = udp_client(client_records, tags, switches)
        else:
            clients[name] = http_client(client_records, switches)
    http = [c for c in clients.values() if "requests" in c]
    udp = [c for c in clients.values() if "sent" in c]
    worst = [c["worst_around_switch_ms"] for c in http if c["worst_around_switch_ms"] is not None]
    return {
        "deploys": len(deploy_durations(events, since=load_start)),
        "switches": len(switches),
        "requests": sum(c["requests"] for c in http),
        "failed_requests": sum(c["failed"] for c in http),
        "udp_sent": sum(c["sent"] for c in udp),
        "udp_unanswered": sum(c["unanswered"] for c in udp),
        "udp_stale_answers": sum(c["stale_answers"] for c in udp),
        "worst_latency_around_switch_ms": max(worst, default=None),
        "flip": flip_figures(events, since=load_start),
        "switch_ms": summary([(e - s) * 1000 for s, e in switches]),
        "steps_ms": step_medians(events, since=load_start),
        "deploy_ms": summary(deploy_durations(events, since=load_start), 0),
        "clients": clients,
        "timeline": timeline(records, switches, start=load_start, tags=tags),
    }


# --- scale -----------------------------------------------------------------------------------------

FLAT_FACTOR = 1.5
FLAT_SLACK_MS = 2.0


def scale_summary(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per point: the flip's commit and step times; and whether the commit time stays flat.

    Flat means the median commit at the largest point is within FLAT_FACTOR times, or
    FLAT_SLACK_MS above, the median at the smallest point (whichever allows more).
    """
    rows = [
        {
            "other_apps": p["other_apps"],
            "install_ms": p.get("install_ms"),
            "committed_ms": summary(p["committed_ms"]),
            "flip_step_ms": summary(p["flip_step_ms"]),
            "deploy_ms": summary(p["deploy_ms"], 0),
            "floor_ms": summary(p.get("floor_ms", [])),
        }
        for p in points
    ]
    medians = [r["committed_ms"]["median"] for r in rows if r["committed_ms"]["median"] is not None]
    flat = None
    if len(medians) >= 2:
        flat = medians[-1] <= max(medians[0] * FLAT_FACTOR, medians[0] + FLAT_SLACK_MS)
    pooled = {
        key: _median(v for p in points for v in p.get(key, [])) for key in ("committed_ms", "flip_step_ms", "floor_ms")
    }
    return {
        "points": rows,
        "flat": flat,
        "largest_over_smallest": _round(medians[-1] / medians[0], 2) if len(medians) >= 2 and medians[0] else None,
        "commit_over_floor": _ratio(pooled["committed_ms"], pooled["floor_ms"]),
        "step_over_commit": _ratio(pooled["flip_step_ms"], pooled["committed_ms"]),
    }


NFT_COMMIT_MS = 1.0
NFT_FLAT_FACTOR = 1.3


def nft_scale_summary(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The nftables flip per point; flat means the largest point's median within NFT_FLAT_FACTOR of the smallest."""
    rows = [
        {
            "other_apps": p["other_apps"],
            "committed_ms": summary(p["committed_ms"], 3),
            **{key: summary(p[key], 3) for key in ("backend_committed_ms", "backend_step_ms") if key in p},
        }
        for p in points
    ]
    result: dict[str, Any] = {"points": rows}
    for prefix, key in (("", "committed_ms"), ("backend_", "backend_committed_ms")):
        medians = [r[key]["median"] for r in rows if key in r and r[key]["median"] is not None]
        ratio = round(medians[-1] / medians[0], 2) if len(medians) >= 2 and medians[0] else None
        result.update(
            {
                f"{prefix}largest_over_smallest": ratio,
                f"{prefix}flat": ratio is not None and ratio <= NFT_FLAT_FACTOR,
                f"{prefix}worst_median_ms": max(medians) if medians else None,
            }
        )
    return result


COMMIT_OVER_FLOOR = 1.5
STEP_OVER_COMMIT = 3.0


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None


# --- targets ---------------------------------------------------------------------------------------


def datapath_targets(datapath: Mapping[str, Any]) -> list[dict[str, Any]]:
    """DNAT against direct (an IPv6 path against IPv6 direct): within 5% in the unpinned rounds, and at least
    PINNED_MIN_THROUGHPUT in the pinned ones.

    Each line names its rounds; results from before the pinned rounds (no "pinned") give the first kind only.
    """
    found = []
    pinned = datapath.get("pinned") or {}
    for rounds, summary in (("unpinned", datapath["summary"]), ("pinned", pinned.get("summary") or {})):
        for client, paths in summary.items():
            for path, how in DNAT_TARGETS.items():
                if path not in paths:
                    continue
                rps, p50 = paths[path].get("rps_ratio"), paths[path].get("p50_ratio")
                if rounds == "unpinned":
                    found.append(
                        {
                            "target": f"DNAT within 5% of direct ({client}{how}; unpinned rounds): throughput and p50",
                            "met": rps is not None and p50 is not None and rps >= 0.95 and p50 <= 1.05,
                            "detail": f"throughput x{rps}, p50 x{p50}",
                        }
                    )
                else:
                    found.append(
                        {
                            "target": f"DNAT at least x{PINNED_MIN_THROUGHPUT} of direct throughput ({client}{how}; "
                            f"pinned rounds)",
                            "met": rps is not None and rps >= PINNED_MIN_THROUGHPUT,
                            "detail": f"throughput x{rps}, p50 x{p50} (wrk on CPU {pinned['load_cpu']}, the "
                            f"container on CPU {pinned['backend_cpu']})",
                        }
                    )
    return found


def targets(
    datapath: Mapping[str, Any] | None,
    deploys: Mapping[str, Any] | None,
    scale: Mapping[str, Any] | None,
    *,
    duration_s: float,
    quick: bool,
    ran: Sequence[str] = ("datapath", "deploys", "scale"),
) -> list[dict[str, Any]]:
    """The issue's targets, each met or not, with the figure that decides it.

    `ran` is the parts the run measured: the run's length is judged only for a run of them all ("met" None: not
    measured), while the figures may come from earlier runs' results.
    """
    found: list[dict[str, Any]] = []
    if datapath:
        found += datapath_targets(datapath)
    if deploys:
        scenarios = deploys["scenarios"]
        ours = scenarios.get("ours")
        if ours:
            found.append(
                {
                    "target": "0 failed requests across all deploys (ours)",
                    "met": ours["failed_requests"] == 0,
                    "detail": f"{ours['failed_requests']} failed of {ours['requests']} over {ours['deploys']} "
                    f"deploys; {ours['udp_unanswered']} of {ours['udp_sent']} datagrams unanswered",
                }
            )
            committed = ours["flip"]["committed_ms"]["median"]
            found.append(
                {
                    "target": "flip under 10 ms at the median (rules committed)",
                    "met": committed is not None and committed < 10,
                    "detail": f"commit median {committed} ms; whole flip step median "
                    f"{ours['flip']['step_ms']['median']} ms",
                }
            )
        for name, scenario in scenarios.items():
            if name == "ours":
                continue
            shown = scenario["failed_requests"] + scenario["udp_unanswered"] + scenario["udp_stale_answers"]
            found.append(
                {
                    "target": f"baseline {name} shows its failures",
                    "met": shown > 0,
                    "detail": f"{scenario['failed_requests']} failed requests, {scenario['udp_unanswered']} "
                    f"unanswered and {scenario['udp_stale_answers']} stale datagrams",
                }
            )
    if scale:
        found.append(
            {
                "target": "flip time flat across 1 to 1,000 other apps",
                "met": bool(scale["summary"]["flat"]),
                "detail": f"median commit at the largest point / smallest: "
                f"x{scale['summary']['largest_over_smallest']}",
            }
        )
    if scale and "commit_over_floor" in scale["summary"]:  # results from before the floor was measured lack it
        over_floor, over_commit = scale["summary"]["commit_over_floor"], scale["summary"]["step_over_commit"]
        found.append(
            {
                "target": f"flip commit within {COMMIT_OVER_FLOOR}x the floor (bare iptables-restore)",
                "met": over_floor is not None and over_floor <= COMMIT_OVER_FLOOR,
                "detail": f"median commit / median floor, all points: x{over_floor}",
            }
        )
        found.append(
            {
                "target": f"whole flip step within {STEP_OVER_COMMIT}x the commit",
                "met": over_commit is not None and over_commit <= STEP_OVER_COMMIT,
                "detail": f"median flip step / median commit, all points: x{over_commit}",
            }
        )
    if scale and "nftables" in scale:
        nft = scale["nftables"]["summary"]
        largest = max(scale["nftables"].get("settings", {}).get("points") or [10000])
        for prefix, what in (("", "nftables floor (a bare element replace)"), ("backend_", "nftables backend flip")):
            if nft.get(f"{prefix}worst_median_ms") is None:
                continue
            worst = nft[f"{prefix}worst_median_ms"]
            found.append(
                {
                    "target": f"{what} commit median within {NFT_COMMIT_MS:g} ms at every point",
                    "met": worst <= NFT_COMMIT_MS,
                    "detail": f"worst median {worst} ms",
                }
            )
            found.append(
                {
                    "target": f"{what} flat (within {NFT_FLAT_FACTOR}x) from 1 to {largest:,} other apps",
                    "met": bool(nft[f"{prefix}flat"]),
                    "detail": f"largest point / smallest: x{nft[f'{prefix}largest_over_smallest']}",
                }
            )
    limit = 180 if quick else 900
    every = {"datapath", "deploys", "scale"} <= set(ran)
    found.append(
        {
            "target": f"{'quick' if quick else 'full'} run under {limit // 60} min",
            "met": duration_s < limit if every else None,
            "detail": f"{duration_s / 60:.1f} min"
            if every
            else f"not measured: the last run measured {', '.join(ran)} only, in {duration_s / 60:.1f} min",
        }
    )
    return found
