"""A job's own process: how the worker starts it, its environment, and what it does once started.

The worker starts each job as `python -m deployer.cli.job` (the entry sits in the command line, above the
composition root, which builds the journal and the tools that `run_claimed` receives), so a job can be timed out
and killed, and a crash in one deploy cannot take the worker down. Every event of the job, including the
engine's steps, is copied into the job by `JobSteps`, where GET /jobs/<id> shows it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from deployer.config import Config
from deployer.errors import StateError
from deployer.journal import Event, Journal, Sink
from deployer.queue.model import Job, JobStatus
from deployer.queue.queue import Queue
from deployer.worker.run import JobTools, execute

log = logging.getLogger("deployer.worker")

ENTRY_MODULE = "deployer.cli.job"


class Running(Protocol):
    pid: int

    def poll(self) -> int | None: ...
    def kill(self) -> None: ...


StartJob = Callable[[list[str], dict[str, str]], Running]  # argv, env -> the started process


def child_environment() -> dict[str, str]:
    """The inherited environment (it carries the *_env secrets), with this package importable from any cwd."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds the deployer package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def job_argv(config: Config, job: Job, python: str = sys.executable) -> list[str]:
    return [python, "-m", ENTRY_MODULE, "--config", str(config.path), "--job", job.id, "--attempt", str(job.attempts)]


def process_launcher(config: Config, start_job: StartJob) -> Callable[[Job], Running]:
    """Each job in `python -m deployer.cli.job`, in the worker's process group, sharing its stderr."""

    def launch(job: Job) -> Running:
        return start_job(job_argv(config, job), child_environment())

    return launch


class JobSteps:
    """A journal sink that copies the events of one job into the queue, for GET /jobs/<id>."""

    SKIP = {"ts", "event", "job", "_durable", "_required", "app", "actor", "step", "outcome"}

    def __init__(self, queue: Queue, job_id: str) -> None:
        self.queue = queue
        self.job_id = job_id

    def __call__(self, event: Event) -> None:
        if event.get("job") != self.job_id:
            return
        name = event["step"] if event["event"] in ("step", "step.begin") else event["event"]
        outcome = "running" if event["event"] == "step.begin" else event.get("outcome")
        detail = {k: v for k, v in event.items() if k not in self.SKIP}
        with contextlib.suppress(StateError):  # a lost progress line must not fail the deploy
            self.queue.jobs.add_step(self.job_id, name, outcome, detail)


def leave_stopping_to_the_worker() -> None:
    """Stopping is the worker's call: it waits for the deploy, or kills it and reconciles. Logs go to stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sh").setLevel(logging.WARNING)


def run_claimed(
    config: Config,
    job_id: str,
    attempt: int,
    *,
    build_journal: Callable[[Config, list[Sink]], Journal],
    build_tools: Callable[[Config, Journal], JobTools],
) -> int:
    """Run the job if it is still this process's to run (running, on this attempt), and record its outcome."""
    queue = Queue.for_state_dir(config.settings.state_dir)
    job = queue.jobs.get(job_id)
    if job is None or job.status != JobStatus.RUNNING or job.attempts != attempt:
        log.warning("job %s is no longer this process's to run", job_id)
        return 0
    journal = build_journal(config, [JobSteps(queue, job.id)])
    execute(job, config=config, queue=queue, journal=journal, tools=build_tools(config, journal))
    return 0
