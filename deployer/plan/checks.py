"""`deployer check`: the config's host, judged from observations gathered elsewhere, one problem a line (pure).

The observations are plain facts: the receiver's account as `pwd` and `grp` give it, the owner and mode of each
file it reads and of every folder above it, what is under the state folder, the hooks folders' entries, and what
each probe (Docker, the registries, the netfilter backend, keepalived) answered. Whether an account can read a file
is decided the way the kernel decides it for that account, not by asking `os.access` as root: the search bit of
every folder on the way, then the read bit of the file, each from the owner's, the group's or the others' bits.

Root never trusts what another user can write: under the state folder every entry is the deployer's own (the user
that runs it, root in production), except in the two folders it shares with the receiver's group (`queue/`,
`audit/`), where the receiver's user and group may write too.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from deployer.config.hooks import hook_file_problem, hooks_folder_problem
from deployer.config.model import HOOK_NAMES

SHARED_FOLDERS = ("queue", "audit")  # deployer/queue/database.py and deployer/audit/log.py: FOLDER
SHARED_FOLDER_MODE = 0o2770  # deployer/folders.py: FOLDER_MODE
MAX_STATE_PROBLEMS = 20  # lines about entries under the state folder; the rest are counted in one more line
READ, WRITE, SEARCH = 4, 2, 1


# --- observations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One path as stat saw it: its owner, its group and its st_mode (type bits included)."""

    path: str
    uid: int
    gid: int
    mode: int

    @property
    def shown(self) -> str:
        return f"{self.path} (uid {self.uid}, gid {self.gid}, mode {stat.S_IMODE(self.mode):04o})"


@dataclass(frozen=True)
class Account:
    """Who a process runs as: its user id, its group id and its supplementary groups."""

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @property
    def gids(self) -> frozenset[int]:
        return self.groups | {self.gid}


@dataclass(frozen=True)
class ReceiverIdentity:
    """`[server] user` and `group` as this host knows them; an id is None when no such account exists."""

    user: str
    group: str
    group_named: bool  # `[server] group` is set; otherwise the group is the user's name
    uid: int | None
    gid: int | None

    @property
    def account(self) -> Account | None:
        """The receiver as it runs: `deployer serve` starts it with this group and no supplementary groups."""
        if self.uid is None or self.gid is None:
            return None
        return Account(self.uid, self.gid)


@dataclass(frozen=True)
class ReadFile:
    """A file the receiver opens: every folder from / down to it, then the file (links resolved, as open does).

    `missing` says why the chain stops early (the file or a folder does not exist, or cannot be seen).
    """

    key: str
    path: str
    chain: tuple[Entry, ...]
    missing: str | None = None


@dataclass(frozen=True)
class HooksListing:
    """A hooks folder the deploys run hooks from, and its entries (as stat sees them through links)."""

    key: str  # "deployer.hooks_dir", "apps.web.hooks_dir"
    folder: str
    configured: bool
    exists: bool
    is_dir: bool
    entries: tuple[Entry, ...] = ()
    unreadable: str | None = None  # why it could not be listed
    itself: Entry | None = None  # the folder's own owner and mode


@dataclass(frozen=True)
class StateTree:
    """The state folder: the folders above it, itself (None while no command has made it), what is under it."""

    path: str
    above: tuple[Entry, ...]
    folder: Entry | None
    entries: tuple[Entry, ...] = ()  # lstat of every entry under it, links not followed
    shared_gid: int | None = None  # `[server] group`'s id: serve gives the shared folders that group


@dataclass(frozen=True)
class ProbeResult:
    """What one probe answered: `problem` None when it did; `detail` what it said (a version)."""

    kind: str  # "docker", "registry", "netfilter", "keepalived"
    subject: str  # the Docker host, the registry, the backend's name, the program
    key: str  # the config key it checks
    problem: str | None
    detail: str = ""
    apps: tuple[str, ...] = ()  # the apps that pull from a registry


@dataclass(frozen=True)
class Observations:
    config_path: str
    deployer_uid: int  # the user the deployer runs as: what it owns, it trusts
    receiver: ReceiverIdentity | None  # None: no `[server] user`, the receiver runs as the user that starts serve
    files: tuple[ReadFile, ...] = ()
    state: StateTree | None = None
    hooks: tuple[HooksListing, ...] = ()
    probes: tuple[ProbeResult, ...] = ()


@dataclass(frozen=True)
class Problem:
    """One thing to fix, named by its config key or its path: `message` says what is wrong and how to fix it."""

    message: str
    key: str | None = None
    path: str | None = None

    @property
    def where(self) -> str:
        return self.key or self.path or "config"

    def line(self) -> str:
        return f"PROBLEM {self.where}: {self.message}"

    def as_dict(self) -> dict[str, str | None]:
        return {"key": self.key, "path": self.path, "message": self.message}


@dataclass(frozen=True)
class Report:
    problems: tuple[Problem, ...]
    checked: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, config_path: str) -> str:
        if self.ok:
            return f"ok: {config_path} and this host are ready ({', '.join(self.checked)})"
        count = len(self.problems)
        return f"{count} problem{'s' if count != 1 else ''} with {config_path} and this host (checked {', '.join(self.checked)})"


# --- permissions -------------------------------------------------------------------------------------


def permitted(account: Account, entry: Entry, wanted: int) -> bool:
    """Whether `account` has the `wanted` bits (READ, WRITE, SEARCH) on `entry`: the owner's class when it owns it,
    else the group's when it is in the group, else the others'. Root (uid 0) reads, writes and searches anything."""
    if account.uid == 0:
        return True
    mode = stat.S_IMODE(entry.mode)
    if entry.uid == account.uid:
        bits = mode >> 6
    elif entry.gid in account.gids:
        bits = mode >> 3
    else:
        bits = mode
    return bits & wanted == wanted


def read_blocker(account: Account, chain: Sequence[Entry]) -> tuple[Entry, str] | None:
    """The first entry that stops `account` reading the last of `chain`, and which permission it lacks; None: it
    can. Every folder needs the search bit, the file the read bit."""
    *folders, target = chain
    for folder in folders:
        if not permitted(account, folder, SEARCH):
            return folder, "search"
    if not permitted(account, target, READ):
        return target, "read"
    return None


def writers_beyond(entry: Entry, uids: frozenset[int], gids: frozenset[int]) -> str | None:
    """Who besides the trusted `uids` and `gids` can change `entry`, or None. A link's own mode means nothing."""
    if entry.uid not in uids:
        return f"belongs to uid {entry.uid}"
    if stat.S_ISLNK(entry.mode):
        return None
    mode = stat.S_IMODE(entry.mode)
    if mode & stat.S_IWOTH:
        return "is writable by every user"
    if mode & stat.S_IWGRP and entry.gid not in gids:
        return f"is writable by group {entry.gid}"
    return None


# --- the judges -----------------------------------------------------------------------------------------


def receiver_problems(receiver: ReceiverIdentity | None) -> list[Problem]:
    if receiver is None:
        return []
    if receiver.uid is None:
        return [
            Problem(
                f"no user {receiver.user!r} on this host, so the receiver cannot start; create it: useradd --system "
                f"--gid {receiver.group} --no-create-home --shell /usr/sbin/nologin {receiver.user}",
                key="server.user",
            )
        ]
    if receiver.gid is None:
        unset = "" if receiver.group_named else f"is not set, so the receiver's group is {receiver.group!r}, and "
        return [
            Problem(
                f"{unset}no group {receiver.group!r} on this host; create it: groupadd --system {receiver.group}",
                key="server.group",
            )
        ]
    return []


def file_problems(receiver: ReceiverIdentity | None, files: Sequence[ReadFile]) -> list[Problem]:
    """Each file the receiver reads that its account cannot read, with the entry that stops it."""
    account = receiver.account if receiver is not None else None
    if account is None or receiver is None:
        return []
    problems = []
    for item in files:
        who = f"the receiver's user {receiver.user!r}"
        key = None if item.key == "config" else item.key
        if item.missing is not None:
            problems.append(Problem(f"{who} cannot open {item.path}: {item.missing}", key=key, path=item.path))
            continue
        blocked = read_blocker(account, item.chain)
        if blocked is None:
            continue
        entry, lacking = blocked
        if lacking == "search":
            said = f"cannot search {entry.shown}, so it cannot read {item.path}"
            fix = f"chgrp {receiver.group} {entry.path}; chmod g+x {entry.path}"
        else:
            said = f"cannot read {entry.shown}"
            fix = f"chown root:{receiver.group} {entry.path}; chmod 0640 {entry.path}"
        problems.append(Problem(f"{who} {said}; {fix}", key=key, path=item.path))
    return problems


def hooks_problems(listings: Sequence[HooksListing], deployer_uid: int = 0) -> list[Problem]:
    """The problems the config loader refuses at load, all of them: a missing folder, a hook that would not run.
    And what it does not look at: root runs the hooks, so a hook or its folder that another user can change is one
    too."""
    trusted_uids, trusted_gids = frozenset({0, deployer_uid}), frozenset({0})
    problems = []
    for listing in listings:
        folder_problem = hooks_folder_problem(
            PurePosixPath(listing.folder), exists=listing.exists, is_dir=listing.is_dir, configured=listing.configured
        )
        if folder_problem is not None:
            problems.append(Problem(f"{folder_problem}; create it, or remove the key", key=listing.key))
            continue
        if listing.unreadable is not None:
            problems.append(Problem(f"cannot list {listing.folder}: {listing.unreadable}", key=listing.key))
            continue
        writable = [listing.itself] if listing.itself is not None else []
        for entry in listing.entries:
            name = PurePosixPath(entry.path).name
            problem = hook_file_problem(
                name, is_file=stat.S_ISREG(entry.mode), executable=bool(stat.S_IMODE(entry.mode) & 0o111)
            )
            if problem is not None:
                problems.append(Problem(problem, path=entry.path))
            elif name in HOOK_NAMES:
                writable.append(entry)
        for entry in writable:
            writers = writers_beyond(entry, trusted_uids, trusted_gids)
            if writers is not None:
                problems.append(
                    Problem(
                        f"{writers}: root runs the hooks, so only root may change them; chown root {entry.path}; "
                        f"chmod go-w {entry.path}",
                        path=entry.path,
                    )
                )
    return problems


def state_problems(state: StateTree | None, receiver: ReceiverIdentity | None, deployer_uid: int) -> list[Problem]:
    """The state folder is the deployer's; its shared folders are the receiver group's too; nothing else writes."""
    if state is None or state.folder is None:
        return []  # the worker makes it, with its modes, when it first starts
    key = "deployer.state_dir"
    account = receiver.account if receiver is not None else None
    if not stat.S_ISDIR(state.folder.mode):
        return [
            Problem(
                f"{state.path} is not a folder (a link?): the deployer refuses to use it; make it a folder of its own",
                key=key,
                path=state.path,
            )
        ]
    if state.folder.uid != deployer_uid:
        return [
            Problem(
                f"{state.path} belongs to uid {state.folder.uid}, not to uid {deployer_uid} that runs the "
                f"deployer: it refuses a state folder another user could rewrite; chown {deployer_uid} {state.path}"
                + ("" if deployer_uid == 0 else " (or run check as root, as serve runs)"),
                key=key,
                path=state.path,
            )
        ]
    problems = []
    trusted_uids = frozenset({0, deployer_uid})
    trusted_gids = frozenset({0})
    shared_uids = trusted_uids | ({account.uid} if account is not None else set())
    shared_gids = trusted_gids | ({account.gid} if account is not None else set())
    shared_gids |= {state.shared_gid} if state.shared_gid is not None else set()
    entries = [state.folder, *state.entries]
    shared = {f"{state.path}/{name}" for name in SHARED_FOLDERS}
    found = []
    for entry in entries:
        in_shared = any(entry.path == folder or entry.path.startswith(folder + "/") for folder in shared)
        uids, gids = (shared_uids, shared_gids) if in_shared else (trusted_uids, trusted_gids)
        writers = writers_beyond(entry, uids, gids)
        if writers is not None:
            found.append(
                Problem(
                    f"{writers}: root never trusts what another user can write; chown {deployer_uid} {entry.path}; "
                    f"chmod go-w {entry.path} (or remove it)",
                    path=entry.path,
                )
            )
    problems += found[:MAX_STATE_PROBLEMS]
    if len(found) > MAX_STATE_PROBLEMS:
        problems.append(
            Problem(f"{len(found) - MAX_STATE_PROBLEMS} more entries under it another user can write", key=key)
        )
    if account is not None and receiver is not None:
        problems += shared_folder_problems(state, receiver, account)
    return problems


def shared_folder_problems(state: StateTree, receiver: ReceiverIdentity, account: Account) -> list[Problem]:
    """Once serve or the worker made them: the receiver reaches the state folder and writes its two shared folders."""
    by_path = {entry.path: entry for entry in state.entries}
    made = [by_path[f"{state.path}/{name}"] for name in SHARED_FOLDERS if f"{state.path}/{name}" in by_path]
    if not made:
        return []
    restart = "deployer serve (or deployer worker) sets it when it starts as root"
    for folder in [*state.above, state.folder]:
        assert folder is not None
        if not permitted(account, folder, SEARCH):
            return [
                Problem(
                    f"the receiver's user {receiver.user!r} cannot search {folder.shown}, so it cannot reach the queue "
                    f"and the audit log; chgrp {receiver.group} {folder.path}; chmod g+x {folder.path}"
                    + (f" ({restart})" if folder is state.folder else ""),
                    key="deployer.state_dir",
                    path=folder.path,
                )
            ]
    problems = []
    for folder in made:
        mode = stat.S_IMODE(folder.mode)
        if folder.gid != account.gid or mode & SHARED_FOLDER_MODE != SHARED_FOLDER_MODE:
            problems.append(
                Problem(
                    f"{folder.shown} is not the receiver's: it must be group {receiver.group} with mode "
                    f"{SHARED_FOLDER_MODE:04o} for the receiver to write it; {restart}, or: chgrp "
                    f"{receiver.group} {folder.path}; chmod {SHARED_FOLDER_MODE:04o} {folder.path}",
                    path=folder.path,
                )
            )
    return problems


PROBE_FIXES = {
    "docker": "start it (systemctl start docker), or correct docker_host",
    "registry": "start it, or correct the registry in the image",
    "netfilter": "run check as root, and install the backend's tools (iptables; libnftables1 for nftables)",
    "keepalived": "[cluster] needs it, the cluster agent runs it: apt-get install keepalived",
}
PROBE_SUBJECTS = {
    "docker": "Docker at {subject} does not answer",
    "registry": "the registry {subject} does not answer /v2/",
    "netfilter": "the {subject} backend cannot read the nat rules",
    "keepalived": "keepalived does not run",
}


def probe_problems(probes: Sequence[ProbeResult]) -> list[Problem]:
    """A probe's own words when they name what it probed ("the Docker daemon at ... does not answer"), else
    what it probed first; then the fix."""
    problems = []
    for probe in probes:
        if probe.problem is None:
            continue
        subject = PROBE_SUBJECTS[probe.kind].format(subject=probe.subject)
        if probe.kind == "registry":
            said = probe.problem.removeprefix(f"registry {probe.subject}: ")  # the probe names the registry too
            subject += f" (pulled by {', '.join(probe.apps)})" if probe.apps else ""
            said = f"{subject}: {said}"
        else:
            said = probe.problem if probe.subject in probe.problem else f"{subject}: {probe.problem}"
        problems.append(Problem(f"{said}; {PROBE_FIXES[probe.kind]}", key=probe.key))
    return problems


def checked(observations: Observations) -> tuple[str, ...]:
    """What was looked at, for the summary line."""
    items = []
    if observations.receiver is not None:
        receiver = observations.receiver
        count = len(observations.files)
        items.append(f"receiver {receiver.user}:{receiver.group} reading {count} file{'s' if count != 1 else ''}")
    if observations.state is not None:
        items.append("state folder")
    if observations.hooks:
        items.append(f"{len(observations.hooks)} hooks folder{'s' if len(observations.hooks) != 1 else ''}")
    for probe in observations.probes:
        shown = {"docker": "Docker", "registry": f"registry {probe.subject}", "netfilter": probe.subject}
        items.append(probe.detail if probe.detail and probe.problem is None else shown.get(probe.kind, probe.subject))
    return tuple(items)


def judge(observations: Observations) -> Report:
    """Every problem the observations show, in the order a reader fixes them: accounts, files, state, hooks, probes."""
    problems = [
        *receiver_problems(observations.receiver),
        *file_problems(observations.receiver, observations.files),
        *state_problems(observations.state, observations.receiver, observations.deployer_uid),
        *hooks_problems(observations.hooks, observations.deployer_uid),
        *probe_problems(observations.probes),
    ]
    return Report(tuple(problems), checked(observations))
