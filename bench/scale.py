"""Part 3: the flip time of one app while 1, 10, 100 and 1,000 other apps have rules installed.

The other apps are stand-ins: their chains and jumps, rendered by `deployer.rules` and
installed in one transaction per point, under the run's own chain prefix. They get no
containers and no traffic. The measured app is deployed by the real engine, back and forth.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from deployer import rules

from bench import analysis
from bench.drivers import EngineDriver
from bench.lab import IMAGE, Lab, say
from bench.plan import Plan, app_toml, filler_chains, filler_name

APP = "flip"


def run_scale(lab: Lab, plan: Plan, tags: list[str]) -> dict[str, Any]:
    assert lab.ports is not None
    driver = EngineDriver(lab, APP, app_toml(APP, IMAGE, lab.ports.scale, drain_seconds=0.3, stop_timeout=3))
    names = rules.ChainNames(lab.names.prefix)
    installed = 0
    points = []
    try:
        driver.deploy(tags[0])
        next_tag = itertools.cycle([tags[1], tags[0]])
        for point in plan.scale_points:
            started = time.monotonic()
            live = rules.parse_nat(lab.netfilter.save_nat())
            chains = filler_chains(lab.names, lab.ports, range(installed, point))
            lab.netfilter.restore(rules.render_restore(live, names, lab.names.bridge, chains))
            install_ms = round((time.monotonic() - started) * 1000, 1)
            installed = point
            mark = len(driver.events)
            for _ in range(plan.flips_per_point):
                driver.deploy(next(next_tag))
            events = driver.events[mark:]
            flips = analysis.steps(events, "flip")
            points.append({
                "other_apps": point,
                "install_ms": install_ms,
                "committed_ms": [e["committed_ms"] for e in flips if "committed_ms" in e],
                "flip_step_ms": [e["duration_ms"] for e in flips],
                "deploy_ms": analysis.deploy_durations(events, since=0),
            })
            say(f"  {point} other apps: flip commit median "
                f"{analysis.summary(points[-1]['committed_ms'])['median']} ms")
        return {
            "settings": {"points": list(plan.scale_points), "flips_per_point": plan.flips_per_point,
                         "stand_ins": "one chain with one DNAT rule each, and its jump, under the run's prefix"},
            "points": points,
            "summary": analysis.scale_summary(points),
        }
    finally:
        lab.remove_containers(APP)
        lab.remove_app_chains([APP, *(filler_name(i) for i in range(installed))])
