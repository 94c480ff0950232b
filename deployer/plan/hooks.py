"""Lifecycle hooks: which executable runs at which point, and the environment it gets.

Pure: the process adapter runs what this module decides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deployer.config import HOOK_NAMES

# A hook must not see the deployer's own secrets, whatever it inherits.
_ALWAYS_DROPPED_PREFIXES = ("DEPLOYER_SECRET", "DEPLOYER_TOKEN")
# A fact such as DEPLOYER_ERROR quotes a container's log lines: bounded, so a hook's environment stays small.
MAX_FACT_CHARS = 4096


@dataclass(frozen=True)
class HookContext:
    app: str
    tag: str
    actor: str
    job: str | None = None
    digest: str | None = None
    old_set: str | None = None
    new_set: str | None = None
    old_tag: str | None = None
    new_ports: Mapping[str, int] | None = None  # "8080/tcp" -> set port of the new instance
    old_ports: Mapping[str, int] | None = None
    bind: str = "127.0.0.1"
    health_path: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class HookOutcome:
    exit_code: int | None  # None: timed out and killed
    output: str


def hook_path(hooks_dir: Path, name: str) -> Path | None:
    """The executable for a hook point, or None when the operator installed none."""
    if name not in HOOK_NAMES:
        raise ValueError(f"unknown hook {name!r}")
    path = Path(hooks_dir) / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


_FACT_NAMES = frozenset(
    {
        "DEPLOYER_HOOK",
        "DEPLOYER_APP",
        "DEPLOYER_TAG",
        "DEPLOYER_ACTOR",
        "DEPLOYER_JOB",
        "DEPLOYER_DIGEST",
        "DEPLOYER_OLD_SET",
        "DEPLOYER_NEW_SET",
        "DEPLOYER_OLD_TAG",
        "DEPLOYER_BIND",
        "DEPLOYER_HEALTH_PATH",
        "DEPLOYER_ERROR",
    }
)


def _is_fact(name: str) -> bool:
    """A name this module sets: never inherited, or a deploy run from a hook would see stale facts."""
    return name in _FACT_NAMES or name.startswith(("DEPLOYER_NEW_PORT", "DEPLOYER_OLD_PORT"))


def hook_environment(
    name: str, context: HookContext, inherited: Mapping[str, str], secret_names: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The inherited environment without secrets, plus DEPLOYER_* facts about this deploy.

    Every value is one the kernel can pass: no NUL in it, and a fact is at most MAX_FACT_CHARS long.
    """
    env = {
        k: _without_nul(v)
        for k, v in inherited.items()
        if k not in secret_names
        and not k.startswith(_ALWAYS_DROPPED_PREFIXES)
        and not _is_fact(k)
        and "\0" not in k
        and "=" not in k
    }
    facts = {
        "DEPLOYER_HOOK": name,
        "DEPLOYER_APP": context.app,
        "DEPLOYER_TAG": context.tag,
        "DEPLOYER_ACTOR": context.actor,
        "DEPLOYER_JOB": context.job,
        "DEPLOYER_DIGEST": context.digest,
        "DEPLOYER_OLD_SET": context.old_set,
        "DEPLOYER_NEW_SET": context.new_set,
        "DEPLOYER_OLD_TAG": context.old_tag,
        "DEPLOYER_BIND": context.bind,
        "DEPLOYER_HEALTH_PATH": context.health_path,
        "DEPLOYER_ERROR": context.error,
    }
    for prefix, ports in (("NEW", context.new_ports), ("OLD", context.old_ports)):
        for key, port in (ports or {}).items():
            number, _, protocol = key.partition("/")
            facts[f"DEPLOYER_{prefix}_PORT_{number}_{protocol.upper()}"] = str(port)
        if ports:
            # The first port, for the common single-port app.
            facts[f"DEPLOYER_{prefix}_PORT"] = str(next(iter(ports.values())))
    env.update({k: _bounded(_without_nul(v)) for k, v in facts.items() if v is not None})
    return env


def _without_nul(value: str) -> str:
    """A NUL cannot be passed in an environment (exec would refuse the whole hook)."""
    return value.replace("\0", "")


def _bounded(value: str) -> str:
    return value if len(value) <= MAX_FACT_CHARS else value[: MAX_FACT_CHARS - 3] + "..."
