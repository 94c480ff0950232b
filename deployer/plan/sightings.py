"""What a controller last learnt of each fleet host's app (its tag, port set, health, last job), as a record for the
queue, so the console can show it without asking the hosts itself. Pure: shapes and bounds, no I/O.

A host's answer is another host's word: before it is kept, each field is checked for its form and cut to a bound
(a tag is a Docker tag, a port set one of two names, at most MAX_HEALTH_PARTS health parts of short text). An
answer that does not fit is kept as that host's problem, never as facts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deployer.errors import UnexpectedAnswer
from deployer.plan.job_states import JOB_ID_RE
from deployer.plan.printable import printable
from deployer.plan.tags import DOCKER_TAG_RE

PORT_SETS = ("blue", "green")
MAX_HEALTH_PARTS = 16
PART_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_HEALTH_TEXT = 120
MAX_PROBLEM_TEXT = 300
STATUS_RE = re.compile(r"^[a-z_]{1,20}$")


@dataclass(frozen=True)
class HostFact:
    """One host's app as the controller last saw it; `problem` set: the host did not answer, or answered badly."""

    host: str
    app: str
    checked_at: float
    tag: str | None = None
    port_set: str | None = None
    health: Mapping[str, str] = field(default_factory=dict)  # part -> "ok" or what is wrong
    last_job: str | None = None
    last_status: str | None = None
    problem: str | None = None

    @property
    def reachable(self) -> bool:
        return self.problem is None

    @property
    def healthy(self) -> bool | None:
        """None: unknown (no answer, or the host reported no health)."""
        if self.problem is not None or not self.health:
            return None
        return all(state == "ok" for state in self.health.values())


def fact_from_answer(host: str, app: str, answer: Mapping[str, Any], *, at: float) -> HostFact:
    """A host's GET /apps/<app>, checked field by field; raises UnexpectedAnswer naming the first that does not fit."""
    tag = answer.get("tag")
    if tag is not None and not (isinstance(tag, str) and DOCKER_TAG_RE.fullmatch(tag)):
        raise UnexpectedAnswer(f"the live tag is not a Docker tag: {printable(repr(tag), 60)}")
    port_set = answer.get("port_set")
    if port_set is not None and port_set not in PORT_SETS:
        raise UnexpectedAnswer(f"the port set is not blue or green: {printable(repr(port_set), 60)}")
    health = answer.get("health") or {}
    if not isinstance(health, Mapping) or len(health) > MAX_HEALTH_PARTS:
        raise UnexpectedAnswer(f"the health is not a table of at most {MAX_HEALTH_PARTS} parts")
    for part, state in health.items():
        if not (isinstance(part, str) and PART_RE.fullmatch(part)) or not isinstance(state, str):
            raise UnexpectedAnswer(f"the health part {printable(repr(part), 40)} is not a name and a text")
    last = answer.get("last_job") or {}
    if not isinstance(last, Mapping):
        raise UnexpectedAnswer("the last job is not a table")
    job, status = last.get("id"), last.get("status")
    if job is not None and not (isinstance(job, str) and JOB_ID_RE.fullmatch(job)):
        raise UnexpectedAnswer(f"the last job's id is not a job id: {printable(repr(job), 60)}")
    if status is not None and not (isinstance(status, str) and STATUS_RE.fullmatch(status)):
        raise UnexpectedAnswer(f"the last job's status is not a status: {printable(repr(status), 60)}")
    return HostFact(
        host=host,
        app=app,
        checked_at=at,
        tag=tag,
        port_set=port_set,
        health={part: printable(state, MAX_HEALTH_TEXT) for part, state in sorted(health.items())},
        last_job=job,
        last_status=status,
    )


def fact_from_problem(host: str, app: str, problem: object, *, at: float) -> HostFact:
    """A host that did not answer, or whose answer was refused: what went wrong, as short printable text."""
    return HostFact(host=host, app=app, checked_at=at, problem=printable(problem, MAX_PROBLEM_TEXT))
