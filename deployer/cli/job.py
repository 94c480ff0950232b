"""The entry of one job's own process: `python -m deployer.cli.job --config ... --job ... --attempt ...`.

The worker starts it (deployer/worker/child.py). It sits in the command line, above the composition root, so it
may take the journal and the tools from deployer/wiring.py and hand them to the job's run.
"""

from __future__ import annotations

import argparse
import sys

from deployer import config as config_module
from deployer import wiring
from deployer.worker import child


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {child.ENTRY_MODULE}", description="run one claimed deploy job")
    parser.add_argument("--config", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load the config, run the job, record its outcome."""
    args = parse_args(argv)
    wiring.die_with_parent()  # a killed worker leaves no deploy running unseen
    child.leave_stopping_to_the_worker()
    config = config_module.load(args.config)
    return child.run_claimed(
        config, args.job, args.attempt, build_journal=wiring.build_journal, build_tools=wiring.build_job_tools
    )


if __name__ == "__main__":
    sys.exit(main())
