"""A fleet client that keeps what each host answered about its apps (deployer/plan/sightings.py), so the console
shows the fleet without asking a host itself: the receiver is unprivileged, faces the internet and holds no key.

Every GET /apps/<app> a rollout or `deployer fleet status` makes is recorded with its time: the answer's facts once
they pass their checks, or the host's problem (no answer, a refusal, an answer that does not fit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from deployer.errors import DeployerError, UnexpectedAnswer
from deployer.fleet.rollout import Hosts
from deployer.plan.sightings import HostFact, fact_from_answer, fact_from_problem

Keep = Callable[[list[HostFact]], None]


class RecordingHosts:
    """`hosts`, with each status answer or failure handed to `keep`. Keeping is for display: a queue that cannot
    take it never fails the ask it comes from."""

    def __init__(self, hosts: Hosts, keep: Keep, *, clock: Callable[[], float] = time.time) -> None:
        self.hosts = hosts
        self.keep = keep
        self.clock = clock

    def deploy(self, host: str, app: str, tag: str, *, rollout: str, reason: str) -> str:
        return self.hosts.deploy(host, app, tag, rollout=rollout, reason=reason)

    def job(self, host: str, job_id: str) -> Mapping[str, Any]:
        return self.hosts.job(host, job_id)

    def status(self, host: str, app: str) -> Mapping[str, Any]:
        try:
            answer = self.hosts.status(host, app)
        except DeployerError as exc:
            self._keep(fact_from_problem(host, app, exc, at=self.clock()))
            raise
        try:
            fact = fact_from_answer(host, app, answer, at=self.clock())
        except UnexpectedAnswer as exc:
            fact = fact_from_problem(host, app, f"its answer was not kept: {exc}", at=self.clock())
        self._keep(fact)
        return answer

    def _keep(self, fact: HostFact) -> None:
        try:
            self.keep([fact])
        except DeployerError:
            pass
