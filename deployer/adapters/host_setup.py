"""The effects of `deployer setup`: what the host holds now, and each step of deployer/plan/setup.py carried out.

The accounts are made with groupadd and useradd, units enabled with systemctl, each spawned directly with its
argument list (sh, no shell). Files are written with `write_atomically` (a temporary file renamed into place through
a descriptor on its folder), and owners and modes are changed through a descriptor opened with O_NOFOLLOW: a link
planted at a target is refused, never followed. Every folder from the install root down to a target must be a
real folder that only root can write; one another user could write is refused before anything is read there.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import stat
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

import sh

from deployer.errors import ConfigError, DeployerError, StateError, UnsafePath
from deployer.folders import open_entry, open_folder, write_atomically
from deployer.plan import setup as plan
from deployer.plan.setup import Facts, PathFact, Targets


class Accounts:
    """The host's users and groups: looked up with pwd and grp, made with groupadd and useradd."""

    def users(self) -> frozenset[str]:
        return frozenset(entry.pw_name for entry in pwd.getpwall())

    def groups(self) -> frozenset[str]:
        return frozenset(entry.gr_name for entry in grp.getgrall())

    def root_uid(self) -> int:
        return pwd.getpwnam(plan.ROOT).pw_uid

    def owner(self, info: os.stat_result) -> tuple[str, str]:
        """The names of a file's user and group (their ids when they have none)."""
        try:
            user = pwd.getpwuid(info.st_uid).pw_name
        except KeyError:
            user = str(info.st_uid)
        try:
            group = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            group = str(info.st_gid)
        return user, group

    def chown(self, fd: int, user: str, group: str) -> None:
        os.fchown(fd, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)

    def create_group(self, name: str) -> None:
        run(["groupadd", "--system", name])

    def create_user(self, name: str, group: str, shell: str) -> None:
        run(["useradd", "--system", "--gid", group, "--no-create-home", "--home-dir", "/nonexistent"]
            + ["--shell", shell, name])  # fmt: skip


class Systemctl:
    """systemd's units: reloaded after a change, enabled and started when asked."""

    def booted(self) -> bool:
        """Whether systemd is this host's init (sd_booted): not in a container or a chroot without it."""
        return Path("/run/systemd/system").is_dir()

    def running(self, units: Iterable[str]) -> frozenset[str]:
        """The units among `units` that are both enabled and active."""
        return frozenset(
            unit
            for unit in units
            if succeeds(["systemctl", "is-enabled", "--quiet", unit])
            and succeeds(["systemctl", "is-active", "--quiet", unit])
        )

    def reload(self) -> None:
        run(["systemctl", "daemon-reload"])

    def enable(self, units: Sequence[str]) -> None:
        run(["systemctl", "enable", "--now", *units])


def run(argv: Sequence[str]) -> None:
    try:
        sh.Command(argv[0])(*argv[1:], _tty_out=False)
    except sh.CommandNotFound:
        raise DeployerError(f"{argv[0]} is not installed; it is needed for: {' '.join(argv)}") from None
    except sh.ErrorReturnCode as exc:
        output = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip().splitlines()
        raise DeployerError(f"{' '.join(argv)} failed (exit {exc.exit_code}): {' '.join(output[-2:])}") from None


def succeeds(argv: Sequence[str]) -> bool:
    try:
        sh.Command(argv[0])(*argv[1:], _tty_out=False)
    except (sh.CommandNotFound, sh.ErrorReturnCode):
        return False
    return True


class HostSetup:
    """Gathers the facts of `Targets` under `root` and carries out the steps, with these accounts and systemctl."""

    def __init__(self, root: Path, accounts: Accounts | None = None, systemctl: Systemctl | None = None) -> None:
        self.root = root
        self.accounts = accounts or Accounts()
        self.systemctl = systemctl or Systemctl()

    # --- facts -------------------------------------------------------------------------------------

    def facts(self, wanted: Targets) -> Facts:
        for path in wanted.paths:
            self.check_folders_above(path)
        files = {file.path: file for file in wanted.files}
        paths = {}
        for path in wanted.paths:
            fact = self.fact(path, read=path in files and not files[path].keep)
            if fact is not None:
                paths[path] = fact
        return Facts(
            users=self.accounts.users(),
            groups=self.accounts.groups(),
            paths=paths,
            enabled=self.systemctl.running(wanted.enable) if wanted.enable else frozenset(),
        )

    def fact(self, path: Path, *, read: bool) -> PathFact | None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(info.st_mode):
            return PathFact("link")
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "other"
        text = None
        if kind == "file" and read:
            fd = open_entry(path)
            with os.fdopen(fd, "rb") as opened:
                text = opened.read().decode(errors="replace")
        user, group = self.accounts.owner(info)
        return PathFact(kind, user=user, group=group, mode=stat.S_IMODE(info.st_mode), text=text)

    def check_folders_above(self, path: Path) -> None:
        """Each existing folder from the root down to `path`'s parent: a real folder only root can write."""
        root_uid = self.accounts.root_uid()
        folder = self.root
        for part in path.parent.relative_to(self.root).parts:
            folder = folder / part
            try:
                info = os.lstat(folder)
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(info.st_mode):
                raise UnsafePath(
                    f"{folder} is not a folder (a link?); refusing to use it (remove it)", path=str(folder)
                )
            if info.st_uid != root_uid or info.st_mode & 0o022:
                raise UnsafePath(
                    f"{folder} can be written by another user than root; refusing to install under it "
                    f"(chown root {folder} && chmod go-w {folder})",
                    path=str(folder),
                )

    # --- steps -------------------------------------------------------------------------------------

    def apply(self, step: plan.Step) -> None:
        match step:
            case plan.CreateGroup(name):
                self.accounts.create_group(name)
            case plan.CreateUser(name, group, shell):
                self.accounts.create_user(name, group, shell)
            case plan.MakeFolder(path, owner):
                self.make_folders_above(path)
                try:
                    os.mkdir(path, 0o700)
                except OSError as exc:
                    raise StateError(f"cannot create the folder {path}: {exc.strerror}") from None
                self.set_owner(path, owner, folder=True)
            case plan.WriteFile(path, owner, text, _):
                self.write(path, owner, text)
            case plan.GenerateSecret(path, owner):
                self.write(path, owner, secrets.token_hex(plan.SECRET_BYTES) + "\n")
            case plan.SetOwner(path, owner, folder):
                self.set_owner(path, owner, folder=folder)
            case plan.ReloadUnits():
                self.systemctl.reload()
            case plan.EnableUnits(units):
                self.systemctl.enable(units)

    def write(self, path: Path, owner: plan.Owner, text: str) -> None:
        self.make_folders_above(path)
        write_atomically(path, text, mode=0o600)  # root's alone until its owner is set
        self.set_owner(path, owner, folder=False)

    def make_folders_above(self, path: Path) -> None:
        """The folders a target needs that are not targets themselves (/usr/local/share/man/man1 ...): root's, 0755."""
        missing = [folder for folder in path.parents if not folder.exists()]
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o755)
                fd = open_folder(folder)
                try:
                    os.fchmod(fd, 0o755)  # whatever the umask
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StateError(f"cannot create the folder {folder}: {exc.strerror}") from None

    def set_owner(self, path: Path, owner: plan.Owner, *, folder: bool) -> None:
        fd = open_folder(path) if folder else open_entry(path)
        try:
            self.accounts.chown(fd, owner.user, owner.group)
            os.fchmod(fd, owner.mode)
        except OSError as exc:
            raise StateError(f"cannot set the owner and mode of {path}: {exc.strerror}") from None
        finally:
            os.close(fd)


# --- what setup installs, from the checkout the deployer runs from ------------------------------------


def shipped_sources(checkout: Path, units: Sequence[str]) -> plan.Sources:
    """The example config and the units (deploy/), the completions and the man page (docs/, made by the parser)."""

    def read(relative: str) -> str:
        try:
            return (checkout / relative).read_text()
        except OSError as exc:
            raise StateError(
                f"cannot read {checkout / relative}: {exc.strerror}; setup installs from a clone of the deployer "
                f"(docs/production.md)"
            ) from None

    return plan.Sources(
        example_config=read("deploy/deployer.toml.example"),
        units={name: read(f"deploy/systemd/{name}") for name in units},
        completions={"bash": read("docs/completion/deployer.bash"), "zsh": read("docs/completion/_deployer")},
        man_page=read("docs/man/deployer.1"),
    )


def configures_cluster(config: Path) -> bool:
    """Whether the config at `config` has a [cluster] table; False when there is no config yet."""
    try:
        fd = open_entry(config)
    except FileNotFoundError:
        return False
    with os.fdopen(fd, "rb") as opened:
        try:
            return "cluster" in tomllib.load(opened)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", path=config) from None
