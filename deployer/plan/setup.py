"""`deployer setup`: what a production host holds, and the steps from what it holds now to that.

`targets` lists what a set-up host has: the receiver's group and user, the folders with their owners and modes,
the example config and the receiver's secrets (written only when absent), the systemd units, the shell completions
and the man page. `steps` compares them with the facts the adapter gathered (`Facts`) and returns, in order, only
what differs: a second run on a set-up host returns no step. A link or anything but a folder or a plain file where
a target goes is refused with UnsafePath: setup never writes through what someone planted.

Every path is under `root` (an install prefix, like DESTDIR); the accounts are the host's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deployer.errors import UnsafePath

USER = "deployer"  # [server] user's default: deployer/config/accounts.py
GROUP = "deployer"
ROOT = "root"
SHELL = "/usr/sbin/nologin"
SERVE_UNIT = "deployer-serve.service"
WATCH_UNIT = "deployer-watch.service"
CLUSTER_UNIT = "deployer-cluster.service"
SECRET_BYTES = 32  # secrets.token_hex(32): 64 hex digits


@dataclass(frozen=True)
class Owner:
    user: str
    group: str
    mode: int

    def __str__(self) -> str:
        return f"{self.user}:{self.group} {self.mode:04o}"


RECEIVER_READS = Owner(ROOT, GROUP, 0o640)  # the config and the receiver's secrets
SHIPPED = Owner(ROOT, ROOT, 0o644)  # units, completions, the man page


@dataclass(frozen=True)
class Layout:
    """Where a production host keeps each thing, under `root`."""

    root: Path = Path("/")

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def config_dir(self) -> Path:
        return self.at("/etc/deployer")

    @property
    def config(self) -> Path:
        return self.config_dir / "deployer.toml"

    @property
    def state_dir(self) -> Path:
        return self.at("/var/lib/deployer/state")

    @property
    def units_dir(self) -> Path:
        return self.at("/etc/systemd/system")

    @property
    def completions(self) -> Mapping[str, Path]:
        return {
            "bash": self.at("/usr/local/share/bash-completion/completions/deployer"),
            "zsh": self.at("/usr/local/share/zsh/site-functions/_deployer"),
        }

    @property
    def man_page(self) -> Path:
        return self.at("/usr/local/share/man/man1/deployer.1")


@dataclass(frozen=True)
class Sources:
    """The texts setup installs: the example config, the units by name, the completions by shell, the man page."""

    example_config: str
    units: Mapping[str, str]
    completions: Mapping[str, str]
    man_page: str


@dataclass(frozen=True)
class Options:
    root: Path = Path("/")
    enable: bool = False  # systemctl enable --now the units that run: serve, and the cluster agent when configured
    cluster: bool = False  # the config has a [cluster] table: its agent's unit is installed too
    systemd_running: bool = True  # systemd is this host's init (/run/systemd/system): units are reloaded


# --- what a set-up host holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Folder:
    path: Path
    owner: Owner


@dataclass(frozen=True)
class File:
    """A file with its owner and mode. `text` None: a secret, generated. `keep`: written only when absent."""

    path: Path
    owner: Owner
    text: str | None
    keep: bool = False
    unit: str | None = None  # a systemd unit's name: a change to it needs a daemon-reload


@dataclass(frozen=True)
class Targets:
    group: str
    user: str
    folders: tuple[Folder, ...]
    files: tuple[File, ...]
    enable: tuple[str, ...]  # the units to enable and start; empty: none
    reload: bool  # systemctl daemon-reload after a unit changed: on this host, when systemd runs it

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(item.path for item in (*self.folders, *self.files))


def units_of(options: Options) -> tuple[str, ...]:
    return (SERVE_UNIT, WATCH_UNIT, *((CLUSTER_UNIT,) if options.cluster else ()))


def targets(options: Options, sources: Sources) -> Targets:
    where = Layout(options.root)
    state = where.state_dir
    folders = (
        Folder(where.config_dir, Owner(ROOT, GROUP, 0o750)),  # the receiver reads the config and its secrets
        Folder(where.config_dir / "operators", Owner(ROOT, GROUP, 0o750)),
        Folder(where.config_dir / "hooks", Owner(ROOT, ROOT, 0o755)),
        Folder(state.parent, Owner(ROOT, ROOT, 0o755)),
        Folder(state, Owner(ROOT, GROUP, 0o750)),  # folders.STATE_FOLDER_MODE: the group may enter, not write
        Folder(state / "queue", Owner(ROOT, GROUP, 0o2770)),  # folders.FOLDER_MODE: the receiver's unit writes
        Folder(state / "audit", Owner(ROOT, GROUP, 0o2770)),  # these two, so they exist before it starts
    )
    units = units_of(options)
    files = (
        File(where.config, RECEIVER_READS, sources.example_config, keep=True),
        File(where.config_dir / "github-secret", RECEIVER_READS, None, keep=True),
        File(where.config_dir / "operators" / "admin", RECEIVER_READS, None, keep=True),
        File(where.config_dir / "console-session-key", RECEIVER_READS, None, keep=True),  # signs console cookies
        *(File(where.units_dir / name, SHIPPED, sources.units[name], unit=name) for name in units),
        *(File(where.completions[shell], SHIPPED, text) for shell, text in sorted(sources.completions.items())),
        File(where.man_page, SHIPPED, sources.man_page),
    )
    running = tuple(name for name in units if name != WATCH_UNIT)  # the watchdog is enabled by choice
    on_this_host = options.root == Path("/") and options.systemd_running
    return Targets(
        group=GROUP,
        user=USER,
        folders=folders,
        files=files,
        enable=running if options.enable else (),
        reload=on_this_host,
    )


# --- what the host holds now -------------------------------------------------------------------------


@dataclass(frozen=True)
class PathFact:
    """What is at a path: kind "folder", "file", "link" or "other", its owner and mode; a file's text when read."""

    kind: str
    user: str = ROOT
    group: str = ROOT
    mode: int = 0
    text: str | None = None

    def owned(self, owner: Owner) -> bool:
        return (self.user, self.group, self.mode) == (owner.user, owner.group, owner.mode)


@dataclass(frozen=True)
class Facts:
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    paths: Mapping[Path, PathFact] = field(default_factory=dict)  # absent: nothing there
    enabled: frozenset[str] = frozenset()  # units both enabled and active


# --- the steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateGroup:
    name: str

    def __str__(self) -> str:
        return f"create the system group {self.name}"


@dataclass(frozen=True)
class CreateUser:
    name: str
    group: str
    shell: str = SHELL

    def __str__(self) -> str:
        return f"create the system user {self.name} (group {self.group}, no home, shell {self.shell})"


@dataclass(frozen=True)
class MakeFolder:
    path: Path
    owner: Owner

    def __str__(self) -> str:
        return f"create the folder {self.path} ({self.owner})"


@dataclass(frozen=True)
class WriteFile:
    path: Path
    owner: Owner
    text: str
    replacing: bool = False

    def __str__(self) -> str:
        return f"{'replace' if self.replacing else 'write'} {self.path} ({self.owner})"


@dataclass(frozen=True)
class GenerateSecret:
    path: Path
    owner: Owner

    def __str__(self) -> str:
        return f"generate the secret {self.path} ({self.owner})"


@dataclass(frozen=True)
class SetOwner:
    """An existing folder or file of the right kind, given its owner and mode."""

    path: Path
    owner: Owner
    folder: bool

    def __str__(self) -> str:
        return f"set {self.path} to {self.owner}"


@dataclass(frozen=True)
class ReloadUnits:
    def __str__(self) -> str:
        return "systemctl daemon-reload"


@dataclass(frozen=True)
class EnableUnits:
    units: tuple[str, ...]

    def __str__(self) -> str:
        return f"systemctl enable --now {' '.join(self.units)}"


Step = CreateGroup | CreateUser | MakeFolder | WriteFile | GenerateSecret | SetOwner | ReloadUnits | EnableUnits


def refused(wanted: Targets, facts: Facts) -> list[tuple[Path, str]]:
    """The target paths that cannot be used, and why: a link, or the wrong kind of entry, where one goes."""
    problems = []
    for path, kind in [*((f.path, "folder") for f in wanted.folders), *((f.path, "file") for f in wanted.files)]:
        fact = facts.paths.get(path)
        if fact is None or fact.kind == kind:
            continue
        what = "a symbolic link" if fact.kind == "link" else f"not a {'folder' if kind == 'folder' else 'plain file'}"
        problems.append((path, f"{path} is {what}; refusing to use it (remove it)"))
    return problems


def steps(wanted: Targets, facts: Facts) -> list[Step]:
    """The changes, in order, that make the host hold `wanted`; [] when it does. UnsafePath when a path is refused."""
    problems = refused(wanted, facts)
    if problems:
        raise UnsafePath("; ".join(reason for _, reason in problems), path=str(problems[0][0]))
    plan: list[Step] = []
    if wanted.group not in facts.groups:
        plan.append(CreateGroup(wanted.group))
    if wanted.user not in facts.users:
        plan.append(CreateUser(wanted.user, wanted.group))
    for folder in wanted.folders:
        fact = facts.paths.get(folder.path)
        if fact is None:
            plan.append(MakeFolder(folder.path, folder.owner))
        elif not fact.owned(folder.owner):
            plan.append(SetOwner(folder.path, folder.owner, folder=True))
    units_changed = False
    for file in wanted.files:
        fact = facts.paths.get(file.path)
        step: Step
        if fact is None:
            step = GenerateSecret(file.path, file.owner) if file.text is None else WriteFile(*_file(file))
        elif not file.keep and fact.text != file.text:
            step = WriteFile(*_file(file), replacing=True)
        elif not fact.owned(file.owner):
            step = SetOwner(file.path, file.owner, folder=False)
        else:
            continue
        plan.append(step)
        units_changed = units_changed or (file.unit is not None and not isinstance(step, SetOwner))
    if units_changed and wanted.reload:
        plan.append(ReloadUnits())
    if wanted.enable and not set(wanted.enable) <= facts.enabled:
        plan.append(EnableUnits(wanted.enable))
    return plan


def _file(file: File) -> tuple[Path, Owner, str]:
    assert file.text is not None
    return file.path, file.owner, file.text


HOMES = ("/root/", "/home/")


def interpreter_warning(venv_python: str, real_python: str) -> str | None:
    """The receiver runs this venv's Python as the user `deployer`: one under a home folder, it cannot read."""
    for path in (venv_python, real_python):
        if path.startswith(HOMES):
            return (
                f"warning: the receiver would run {path}, under a home folder the user {USER} cannot read; make the "
                f"venv in /opt/deployer with the system Python, /usr/bin/python3 (docs/production.md)"
            )
    return None


def describe(plan: Sequence[Step], *, dry_run: bool) -> list[str]:
    """The lines setup prints: each step, or that the host is set up already."""
    if not plan:
        return ["nothing to change: this host is set up"]
    return [f"{'would ' if dry_run else ''}{step}" for step in plan]
