"""The bench: data path, deploys under load, and scale; tables, JSON, plots and BENCHMARKS.md.

    bench/run                      # everything, ~10 min: bench/results/*.json|png and BENCHMARKS.md
    bench/run --quick              # the CI smoke, ~2 min: bench/results/tmp/quick/
    bench/run --only cluster       # three hosts sharing one address, ~3 min (bench/cluster.py)
    bench/run --parts datapath     # one part; BENCHMARKS.md keeps the other parts' figures from their own runs
    .venv/bin/python -m bench --report   # BENCHMARKS.md again from bench/results/*.json, nothing measured
    .venv/bin/python -m bench --parts scale --results /tmp/r    # one part, elsewhere (as root)

`bench/run` installs what the bench needs first (.venv included); `python -m bench` assumes it is there.
Run as root: it drives dockerd, iptables, conntrack and network namespaces. Everything it
makes is removed at the end, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import analysis, machine, report
from bench.lab import REPO, Lab, say, timed
from bench.plan import Plan, plan_for, tags_for

PARTS = ("datapath", "deploys", "scale")
DEFAULT_RESULTS = REPO / "bench" / "results"
QUICK_RESULTS = DEFAULT_RESULTS / "tmp" / "quick"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for CI: 2 deploys, 1 round, 2 flips a point")
    parser.add_argument(
        "--results",
        type=Path,
        help="folder for the JSON and PNG files (default bench/results, or bench/results/tmp/quick)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help="where to write the report (default BENCHMARKS.md for a full "
        "run into bench/results, else RESULTS/BENCHMARKS.md)",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--deploys", type=int, help="deploys per scenario (default 20; quick 2)")
    parser.add_argument("--rounds", type=int, help="data-path rounds (default 6; quick 1)")
    parser.add_argument(
        "--pinned-rounds",
        type=int,
        help="data-path rounds with wrk and the container on cores of their own (default 4; quick 1; 0: none)",
    )
    parser.add_argument(
        "--no-ipv6",
        action="store_true",
        help="data path: IPv4 paths only, on an IPv4 network (a full run's rounds are dual-stack by default, which "
        "costs it about five minutes; quick is IPv4 only)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="measure nothing: write the report again from the results folder's JSON files (no root needed)",
    )
    parser.add_argument(
        "--only",
        choices=["cluster"],
        help="run one part that is not in the default run: cluster "
        "(three hosts sharing an address; see bench/cluster.py)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if args.only == "cluster":
        from bench.cluster import main as cluster_main

        return cluster_main(
            [
                *(["--results", str(args.results)] if args.results else []),
                *(["--rounds", str(args.rounds)] if args.rounds else []),
                *rest,
            ]
        )
    if rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.report:
        results = args.results or DEFAULT_RESULTS
        markdown = args.markdown or default_markdown(results)
        write_report(results, markdown, json.loads((results / "run.json").read_text()))
        say(f"wrote {markdown} from {results}/*.json")
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(f"bench: unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench: run as root (dockerd, iptables, conntrack, network namespaces)", file=sys.stderr)
        return 2
    plan = plan_for(
        args.quick,
        deploys=args.deploys,
        rounds=args.rounds,
        pinned_rounds=args.pinned_rounds,
        ipv6=False if args.no_ipv6 else None,
    )
    results = args.results or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    markdown = args.markdown or default_markdown(results)
    command = " ".join(["sudo bench/run", *(argv if argv is not None else sys.argv[1:])]).strip()
    return run(plan, parts, results, markdown, command)


def run(plan: Plan, parts: list[str], results: Path, markdown: Path, command: str) -> int:
    started, started_at = time.monotonic(), datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = machine.load_average()
    outputs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    tags = tags_for(plan)
    with Lab(ipv6=plan.ipv6 and "datapath" in parts) as lab:
        owner = {"prefix": lab.names.prefix, "ports": [lab.ports.base, lab.ports.base + 99] if lab.ports else None}
        with timed("building images"):
            lab.again_after_docker_restart("building images", lambda: lab.build_images(tags), lambda: None)
        outside = lab.outside()
        from bench.datapath import run_datapath
        from bench.deploys import run_deploys
        from bench.scale import run_scale

        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "datapath": lambda: run_datapath(lab, plan, outside, tags),
            "deploys": lambda: run_deploys(lab, plan, outside, tags),
            "scale": lambda: run_scale(lab, plan, tags),
        }
        for part in parts:
            try:
                with timed(part) as took:
                    outputs[part] = lab.again_after_docker_restart(part, steps[part], lambda: lab.remove_containers())
                outputs[part]["seconds"] = took["seconds"]
            except Exception as exc:  # report the other parts all the same
                traceback.print_exc()
                errors[part] = f"{type(exc).__name__}: {exc}"
        retried = list(lab.retried)
        for name, error in outputs.get("deploys", {}).get("errors", {}).items():
            errors[f"deploys/{name}"] = error
    duration = round(time.monotonic() - started, 1)

    run_info: dict[str, Any] = {
        "command": command,
        "quick": plan.quick,
        **owner,
        "plan": plan.as_dict(),
        "parts": parts,
        "started_at": started_at,
        "duration_s": duration,
        "machine": machine.describe(),
        "tools": tool_versions(),
        "load_average": {"start": load_start, "end": machine.load_average()},
        "errors": errors,
        "retried_after_dockerd_restart": retried,
    }
    run_info["targets"] = analysis.targets(
        outputs.get("datapath"),
        outputs.get("deploys"),
        outputs.get("scale"),
        duration_s=duration,
        quick=plan.quick,
        ran=parts,
    )
    results.mkdir(parents=True, exist_ok=True)
    for part, output in outputs.items():
        write_json(
            results / f"{part}.json",
            {"part": part, "quick": plan.quick, "started_at": started_at, "command": command, **output},
        )
    write_json(results / "run.json", run_info)

    plots = draw_plots(outputs, results, errors)
    print()
    print(report.terminal_report(run_info, outputs))
    write_report(results, markdown, run_info, plots)
    say(f"wrote {results}/*.json, {len(plots)} plots and {markdown} in {duration / 60:.1f} min")
    return 1 if errors else 0


def default_markdown(results: Path) -> Path:
    return REPO / "BENCHMARKS.md" if results.resolve() == DEFAULT_RESULTS.resolve() else results / "BENCHMARKS.md"


def write_report(results: Path, markdown: Path, run_info: dict[str, Any], drawn: dict[str, Path] | None = None) -> None:
    """The report from every result file in `results`: this run's parts, and those an earlier run of the same
    kind left there (a run of some parts keeps the others' figures, and each section names its run)."""
    shown: dict[str, Any] = {}
    for part in PARTS:
        path = results / f"{part}.json"
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("quick") == run_info["quick"]:
                shown[part] = data
    plots = {p: results / f"{p}.png" for p in shown if (results / f"{p}.png").exists()} | (drawn or {})
    info = {
        **run_info,
        "targets": analysis.targets(
            shown.get("datapath"),
            shown.get("deploys"),
            shown.get("scale"),
            duration_s=run_info["duration_s"],
            quick=run_info["quick"],
            ran=run_info["parts"],
        ),
    }
    relative = {name: os.path.relpath(path, markdown.parent) for name, path in plots.items()}
    others = other_results(results, markdown)
    extra = {}
    for path, _ in others:
        try:
            extra[Path(path).stem] = json.loads((markdown.parent / path).read_text())
        except (OSError, ValueError):
            continue  # listed all the same, without its figures
    markdown.write_text(report.benchmarks_markdown(info, shown, relative, others, extra))


def draw_plots(outputs: dict[str, Any], results: Path, errors: dict[str, str]) -> dict[str, Path]:
    from bench import plots

    drawers = {"datapath": plots.datapath_plot, "deploys": plots.deploys_plot, "scale": plots.scale_plot}
    written = {}
    for part, draw in drawers.items():
        if part not in outputs or (part == "deploys" and not outputs[part]["scenarios"]):
            continue
        path = results / f"{part}.png"
        try:
            draw(outputs[part], path)
            written[part] = path
        except Exception as exc:  # a plot must not cost the figures
            traceback.print_exc()
            errors[f"plot {part}"] = f"{type(exc).__name__}: {exc}"
    return written


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def other_results(results: Path, markdown: Path) -> list[tuple[str, str]]:
    """Result files other bench scripts wrote next to ours, and the script that writes each."""
    ours = {f"{p}.json" for p in PARTS} | {"run.json"}
    found = []
    for path in sorted(results.glob("*.json")):
        if path.name in ours:
            continue
        stem = path.stem
        scripts = [s for s in (REPO / "bench" / f"{stem}_bench.py", REPO / "bench" / f"{stem}.py") if s.exists()]
        scripts = scripts or sorted((REPO / "bench").glob(f"*{stem}*.py"))
        how = f"written by `python3 {scripts[0].relative_to(REPO)}`" if scripts else "written by another bench script"
        found.append((os.path.relpath(path, markdown.parent), how))
    return found


_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?[\w.+~-]*")


def tool_versions() -> dict[str, str]:
    commands = {
        "wrk": ["wrk", "-v"],
        "HAProxy": ["haproxy", "-v"],
        "nginx": ["nginx", "-v"],
        "Docker Engine": ["docker", "version", "--format", "{{.Server.Version}}"],
        "iptables": ["iptables", "-V"],
    }
    versions = {}
    for name, argv in commands.items():
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = _VERSION.search(out.stdout + out.stderr)
        if match:
            versions[name] = match.group(0)
    return versions


if __name__ == "__main__":
    sys.exit(main())
