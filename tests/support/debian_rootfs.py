"""A stock Debian root filesystem to install into: built by debootstrap, cached, entered with chroot.

It holds what `debootstrap --variant=minbase` makes (no python3, no pip, no sudo) and only these
additions:
- what every real machine has and a debootstrap tree lacks: /etc/hosts with localhost, and this
  machine's resolv.conf;
- what this machine needs to reach the package mirrors: its apt sources, and its pip configuration
  with its CA bundle, kept apart from the tree's own /etc/ssl/certs (ca-certificates rewrites that
  folder whenever a package installs) and named by PIP_CERT;
- a policy-rc.d that forbids every service start, so installing docker.io starts nothing.

The tree is built once per suite and variant and cached as a tarball in /var/cache/deployer-ci/
(built again when missing or older than MAX_AGE); each use extracts a fresh copy under /var/tmp.
proc and /dev are mounted only while commands run, and always unmounted, on failure too; a tree
is removed only once nothing is mounted in it, so its /dev never takes the host's with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE = Path("/var/cache/deployer-ci")
MAX_AGE = 30 * 24 * 3600  # a stock machine is a recent one: rebuild monthly
WORK_DIR = Path("/var/tmp")
PREFIX = "deployer-rootfs-"  # then the pid of the run that made it, so a later run knows it is dead
PIP_CA = "/etc/deployer-ci/pip-ca.crt"  # inside the tree
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"  # as Debian's installer writes it
POLICY_RC_D = "#!/bin/sh\n# No service starts inside this tree.\nexit 101\n"


class RootfsError(RuntimeError):
    """The tree could not be built, prepared or cleaned up; the message says which step and why."""


def run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)


def check(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    result = run(argv, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RootfsError(f"{' '.join(argv)} exited {result.returncode}: {(result.stdout + result.stderr)[-2000:]}")
    return result


# --- the mirror, from this machine's apt sources (pure) ---------------------------------------------


def mirror(sources: Iterable[tuple[str, str]], suite: str = SUITE) -> str | None:
    """The first `deb` URI that serves `suite` itself, from (file name, text) pairs of apt sources.

    One-line `.list` entries (`deb [options] URI SUITE COMPONENTS...`) and deb822 `.sources`
    paragraphs (Types, URIs, Suites, Enabled) are both read.
    """
    for name, text in sources:
        if name.endswith(".sources"):
            for paragraph in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in paragraph.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                    and fields.get("uris")
                ):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    return None


def apt_source_files(etc: Path = Path("/etc")) -> list[Path]:
    """The apt source files apt itself reads: sources.list and sources.list.d/*.list|*.sources."""
    files = [etc / "apt" / "sources.list"]
    folder = etc / "apt" / "sources.list.d"
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".list", ".sources"))
    return [p for p in files if p.is_file()]


def host_mirror() -> str:
    return mirror((p.name, p.read_text()) for p in apt_source_files()) or DEFAULT_MIRROR


# --- mounts and processes inside a tree --------------------------------------------------------------


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    root = str(path)
    with open("/proc/self/mountinfo") as mountinfo:
        points = [_unescape(line.split()[4]) for line in mountinfo]
    inside = {p for p in points if p == root or p.startswith(root + "/")}
    return sorted(inside, key=lambda p: p.count("/"), reverse=True)


def processes_inside(path: Path) -> list[int]:
    """Processes whose root directory is `path` or below: what a chroot into it started."""
    root, found = str(path), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                target = os.readlink(entry / "root")
            except OSError:
                continue
            if target == root or target.startswith(root + "/"):
                found.append(int(entry.name))
    return found


def unmount_all(path: Path) -> None:
    """Unmount everything at or below `path`: a plain umount first, a lazy one where that fails."""
    for point in mounts_under(path):
        if run(["umount", point], timeout=60).returncode != 0:
            run(["umount", "-l", point], timeout=60)


def remove_tree(path: Path) -> None:
    """Stop what runs inside `path`, unmount what is mounted in it, then delete it; never with a mount left."""
    for pid in processes_inside(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes_inside(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    unmount_all(path)
    left = mounts_under(path)
    if left:
        raise RootfsError(f"still mounted, so {path} is kept: {left}")
    shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_leftovers() -> None:
    """Remove the trees and half-built caches of runs that were killed (their pid is gone)."""
    for folder in (WORK_DIR, CACHE):
        for entry in folder.glob(f"{PREFIX}*") if folder.is_dir() else []:
            pid = entry.name[len(PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)) and entry.is_dir():
                remove_tree(entry)


# --- the cached stock tree --------------------------------------------------------------------------


def ensure_debootstrap() -> str | None:
    """Install Debian's debootstrap when it is missing; the reason it is unavailable, or None."""
    if shutil.which("debootstrap"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    run([*apt, "update", "-qq"], env=env)
    result = run([*apt, "install", "-y", "-qq", "--no-install-recommends", "debootstrap"], env=env)
    if shutil.which("debootstrap") is None:
        return f"debootstrap is not installed and apt-get could not install it: {result.stderr.strip()[-500:]}"
    return None


def cached_tarball(log: list[str]) -> Path:
    """The stock tree as a tarball, built now when missing or stale; one build at a time per machine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"debootstrap-{SUITE}-{VARIANT}.tar.gz"
    with open(CACHE / f"debootstrap-{SUITE}-{VARIANT}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists() and time.time() - tarball.stat().st_mtime < MAX_AGE:
            log.append(f"cached {tarball.name}")
            return tarball
        started = time.monotonic()
        source = host_mirror()
        build = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-build-", dir=CACHE))
        try:
            check(["debootstrap", f"--variant={VARIANT}", SUITE, str(build), source], timeout=1200)
            unmount_all(build)  # debootstrap unmounts its proc and sys itself; none of it may go into the tarball
            partial = tarball.with_suffix(".partial")
            check(["tar", "--numeric-owner", "-C", str(build), "-czf", str(partial), "."])
            os.replace(partial, tarball)
        finally:
            remove_tree(build)
        log.append(f"built {tarball.name} from {source} in {time.monotonic() - started:.0f} s")
        return tarball


def _copy_tree(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Rootfs:
    """A fresh copy of the stock tree under /var/tmp, ready to chroot into."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, log: list[str]) -> Rootfs:
        tarball = cached_tarball(log)
        rootfs = cls(Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=WORK_DIR)))
        try:
            check(["tar", "--numeric-owner", "-C", str(rootfs.path), "-xzf", str(tarball)])
            # It becomes /: mkdtemp's 0700, which the tarball's own "./" entry also carries (it was packed from
            # one), would lock out _apt and every user. Set after the extraction, which restores "./"'s mode.
            rootfs.path.chmod(0o755)
            rootfs._prepare()
        except BaseException:
            rootfs.remove()
            raise
        return rootfs

    def _prepare(self) -> None:
        etc = self.path / "etc"
        sources = apt_source_files()
        if sources:
            (etc / "apt" / "sources.list").unlink(missing_ok=True)  # debootstrap's one line, now the host's
            for source in sources:
                shutil.copy(source, self.path / source.relative_to("/"))
        (etc / "hosts").write_text(HOSTS)
        shutil.copy("/etc/resolv.conf", etc / "resolv.conf")  # follows a symlink: the file itself
        policy = self.path / "usr" / "sbin" / "policy-rc.d"
        policy.write_text(POLICY_RC_D)
        policy.chmod(0o755)
        # This machine's pip configuration: system-wide, XDG and the user's, at the same places.
        if Path("/etc/pip.conf").is_file():
            shutil.copy("/etc/pip.conf", etc / "pip.conf")
        _copy_tree(Path("/etc/xdg/pip"), etc / "xdg" / "pip")
        _copy_tree(Path.home() / ".config" / "pip", self.path / "root" / ".config" / "pip")
        bundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        if bundle.is_file():
            target = self.path / PIP_CA.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(bundle, target)

    def clone(self, repo: Path, inside: str) -> str:
        """A clean `git clone` of `repo`'s current HEAD at `inside`; returns the commit."""
        commit = check(["git", "-C", str(repo), "rev-parse", "HEAD"]).stdout.strip()
        target = self.path / inside.lstrip("/")
        check(["git", "clone", "-q", "--no-local", str(repo), str(target)])
        check(["git", "-C", str(target), "checkout", "-q", "--detach", commit])
        return commit

    def env(self) -> list[str]:
        """A login-like environment: nothing of the caller's but CI and its pip settings."""
        env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        env.update({key: value for key, value in os.environ.items() if key.startswith("PIP_") and key != "PIP_CERT"})
        if (self.path / PIP_CA.lstrip("/")).is_file():
            env["PIP_CERT"] = PIP_CA
        if "CI" in os.environ:
            env["CI"] = os.environ["CI"]
        return [f"{key}={value}" for key, value in env.items()]

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Rootfs]:
        """proc and a bind of /dev, which apt needs; both unmounted afterwards, whatever happened."""
        try:
            check(["mount", "-t", "proc", "proc", str(self.path / "proc")], timeout=60)
            check(["mount", "--bind", "/dev", str(self.path / "dev")], timeout=60)
            yield self
        finally:
            for pid in processes_inside(self.path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            unmount_all(self.path)
            left = mounts_under(self.path)
            if left:
                raise RootfsError(f"could not unmount {left}")

    def run(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`script` in bash inside the tree, as root, stdout and stderr together.

        SIGINT starts at its default, as in a terminal: a test run started in the background by a
        shell inherits it ignored, and Python then never turns it into KeyboardInterrupt.
        """
        return subprocess.run(
            ["chroot", str(self.path), "/usr/bin/env", "-i", *self.env(), "bash", "-c", script],
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            preexec_fn=_default_sigint,
        )

    def remove(self) -> None:
        remove_tree(self.path)
