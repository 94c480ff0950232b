"""The queue: one SQLite database and the stores over it, opened together."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployer.queue.attempts import AttemptStore
from deployer.queue.database import Database, queue_path
from deployer.queue.deliveries import DeliveryStore
from deployer.queue.flows import FlowStore
from deployer.queue.heartbeat import HeartbeatStore
from deployer.queue.jobs import JobStore
from deployer.queue.live import LiveStore
from deployer.queue.reports import ReportStore
from deployer.queue.rollouts import RolloutStore
from deployer.queue.sightings import SightingStore


class Queue:
    """The queue database and its stores: `jobs`, `deliveries`, `live`, `rollouts`, `heartbeat`, `reports`,
    `attempts`, `flows`, `sightings`.

    One connection per process and thread, shared by the stores; never shared across a fork.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.database = Database(path, clock=clock)
        self.jobs = JobStore(self.database)
        self.deliveries = DeliveryStore(self.database)
        self.live = LiveStore(self.database)
        self.rollouts = RolloutStore(self.database)
        self.heartbeat = HeartbeatStore(self.database)
        self.reports = ReportStore(self.database)
        self.attempts = AttemptStore(self.database)
        self.flows = FlowStore(self.database)
        self.sightings = SightingStore(self.database)

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str], **kwargs: Any) -> Queue:
        return cls(queue_path(state_dir), **kwargs)

    @property
    def path(self) -> Path:
        return self.database.path

    @property
    def clock(self) -> Callable[[], float]:
        return self.database.clock

    def close(self) -> None:
        self.database.close()
