"""`deployer check`'s observations of this host, gathered; `deployer/plan/checks.py` judges them.

What is gathered: `[server] user` and `group` as the account database knows them, the owner and mode of every file
the receiver reads and of each folder on the way to it, everything under the state folder (links not followed),
the entries of the hooks folders, and what each probe answered. The probes (Docker, the registries, the netfilter
backend, keepalived) come from the wiring; they run at once, and one that raises or has not answered by the
deadline is an observation like any other, never a traceback.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from deployer.config import Config
from deployer.config.hooks import hooks_folders
from deployer.config.receiver_files import receiver_files
from deployer.errors import DeployerError
from deployer.plan.checks import (
    Entry,
    HooksListing,
    Observations,
    ProbeResult,
    ReadFile,
    ReceiverIdentity,
    Report,
    StateTree,
    judge,
)

PROBE_DEADLINE = 15.0  # seconds all the probes together may take; each adapter has its own shorter timeout
MAX_STATE_ENTRIES = 20_000  # entries of the state folder looked at; a state folder holds far fewer


@dataclass(frozen=True)
class HostProbes:
    """What the wiring gives: each probe raises DeployerError when what it asks does not answer."""

    docker: Callable[[], object]
    netfilter: Callable[[], object]
    registries: Mapping[str, Callable[[], str | None]] = field(default_factory=dict)  # None: it answers; else why not
    keepalived: Callable[[], str] | None = None  # keepalived's version; None without [cluster]


class Accounts(Protocol):
    def user(self, name: str) -> tuple[int, int] | None: ...  # (uid, primary gid), None: no such user
    def group(self, name: str) -> int | None: ...  # gid, None: no such group


class SystemAccounts:
    """The host's account database, through pwd and grp."""

    def user(self, name: str) -> tuple[int, int] | None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid

    def group(self, name: str) -> int | None:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None


class HostChecks:
    def __init__(
        self,
        config: Config,
        probes: HostProbes,
        *,
        accounts: Accounts | None = None,
        deployer_uid: int | None = None,
        deadline: float = PROBE_DEADLINE,
    ) -> None:
        self.config = config
        self.probes = probes
        self.accounts = accounts or SystemAccounts()
        self.deployer_uid = os.geteuid() if deployer_uid is None else deployer_uid
        self.deadline = deadline

    def run(self) -> Report:
        return judge(self.observe())

    def observe(self) -> Observations:
        receiver = self.receiver()
        return Observations(
            config_path=str(self.config.path),
            deployer_uid=self.deployer_uid,
            receiver=receiver,
            files=tuple(read_file(item.key, item.path) for item in receiver_files(self.config)) if receiver else (),
            state=self.state_tree(),
            hooks=tuple(self.hooks()),
            probes=tuple(self.run_probes()),
        )

    def receiver(self) -> ReceiverIdentity | None:
        server = self.config.server
        if server.user is None:
            return None
        group = server.group or server.user
        found = self.accounts.user(server.user)
        return ReceiverIdentity(
            user=server.user,
            group=group,
            group_named=server.group is not None,
            uid=found[0] if found else None,
            gid=self.accounts.group(group),
        )

    def state_tree(self) -> StateTree:
        folder = Path(self.config.settings.state_dir)
        group = self.config.server.group
        itself = lstat_entry(folder)
        return StateTree(
            path=str(folder),
            above=tuple(entry for entry in map(stat_entry, folder.parents[::-1]) if entry is not None),
            folder=itself,
            entries=tuple(walk(folder)) if itself is not None and stat.S_ISDIR(itself.mode) else (),  # not a link
            shared_gid=self.accounts.group(group) if group else None,
        )

    def hooks(self) -> Iterator[HooksListing]:
        configured = "hooks_dir" in self.config.raw.get("deployer", {})
        for hooks in hooks_folders(self.config.settings, self.config.apps, configured=configured):
            key = hooks.key if hooks.app is None else f"apps.{hooks.app}.{hooks.key}"
            folder = hooks.folder
            listing = HooksListing(
                key=key,
                folder=str(folder),
                configured=hooks.configured,
                exists=folder.exists(),
                is_dir=folder.is_dir(),
                itself=stat_entry(folder),
            )
            if listing.is_dir:
                try:
                    names = sorted(os.listdir(folder))
                except OSError as exc:
                    listing = replace(listing, unreadable=exc.strerror or str(exc))
                else:
                    entries = (stat_entry(folder / name) or lstat_entry(folder / name) for name in names)
                    listing = replace(listing, entries=tuple(e for e in entries if e))
            yield listing

    def probe_calls(self) -> list[tuple[ProbeResult, Callable[[], object]]]:
        """Each probe, with the observation it fills in: which config key it checks, what it names."""
        settings = self.config.settings
        calls: list[tuple[ProbeResult, Callable[[], object]]] = [
            (ProbeResult("docker", settings.docker_host, "deployer.docker_host", None), self.probes.docker)
        ]
        users: dict[str, list[str]] = {}
        for app in self.config.apps.values():
            if app.registry:
                users.setdefault(app.registry, []).append(app.name)
        for registry, probe in sorted(self.probes.registries.items()):
            apps = tuple(users.get(registry, ()))
            key = f"apps.{apps[0]}.image" if apps else f"registries.{registry}"
            calls.append((ProbeResult("registry", registry, key, None, apps=apps), probe))
        calls.append((ProbeResult("netfilter", settings.backend, "deployer.backend", None), self.probes.netfilter))
        if self.probes.keepalived is not None:
            calls.append((ProbeResult("keepalived", "keepalived", "cluster", None), self.probes.keepalived))
        return calls

    def run_probes(self) -> list[ProbeResult]:
        """Every probe at once; each answer, failure or silence past the deadline becomes its result."""
        calls = self.probe_calls()
        pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="check-probe")
        try:
            futures = [pool.submit(call) for _, call in calls]
            wait(futures, timeout=self.deadline)
            return [probe_result(result, future, self.deadline) for (result, _), future in zip(calls, futures)]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def probe_result(result: ProbeResult, future: Future[object], deadline: float) -> ProbeResult:
    """`result` filled in from what its probe did: answered (a registry's "why not", keepalived's version), raised,
    or is still running at the deadline."""
    if not future.done():
        return replace(result, problem=f"no answer within {deadline:g} s")
    try:
        value = future.result()
    except DeployerError as exc:
        return replace(result, problem=str(exc)[:300])
    except Exception as exc:  # noqa: BLE001 - a probe reports what went wrong; check never ends in a traceback
        return replace(result, problem=f"{type(exc).__name__}: {str(exc)[:300]}".rstrip(": "))
    if result.kind == "registry":
        return replace(result, problem=value) if value else result
    if result.kind == "keepalived" and isinstance(value, str):
        return replace(result, detail=value)
    return result


def entry(path: Path, info: os.stat_result) -> Entry:
    return Entry(str(path), info.st_uid, info.st_gid, info.st_mode)


def stat_entry(path: Path) -> Entry | None:
    """`path` as open() reaches it, through links; None when it cannot be seen."""
    try:
        return entry(path, os.stat(path))
    except OSError:
        return None


def lstat_entry(path: Path) -> Entry | None:
    try:
        return entry(path, os.lstat(path))
    except OSError:
        return None


def read_file(key: str, path: Path) -> ReadFile:
    """The folders from / to `path` (and to where its links lead), then the file: what opening it crosses."""
    folders = [*Path(os.path.abspath(path)).parents[::-1]]
    resolved = Path(os.path.realpath(path))
    folders += [folder for folder in resolved.parents[::-1] if folder not in folders]
    chain = []
    for step in [*folders, resolved]:
        try:
            chain.append(entry(step, os.stat(step)))
        except OSError as exc:
            return ReadFile(key, str(path), tuple(chain), missing=f"{step}: {exc.strerror or exc}")
    if not stat.S_ISREG(chain[-1].mode):
        return ReadFile(key, str(path), tuple(chain), missing=f"{resolved} is not a file")
    return ReadFile(key, str(path), tuple(chain))


def walk(folder: Path) -> Iterator[Entry]:
    """lstat of every entry under `folder`, links not followed, up to MAX_STATE_ENTRIES."""
    seen = 0
    for parent, folders, files in os.walk(folder, followlinks=False):
        for name in sorted(folders) + sorted(files):
            found = lstat_entry(Path(parent) / name)
            if found is not None:
                yield found
                seen += 1
                if seen >= MAX_STATE_ENTRIES:
                    return
