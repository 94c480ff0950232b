"""keepalived as a process the agent supervises: its config file, its track files, its notify FIFO, its pid.

Stopped by its own pid (the pidfile it was started with), never by name: other keepalived processes may run on
the same machine. Decides nothing: what to write and when is the agent's (deployer/host/cluster.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from deployer.errors import ClusterError
from deployer.folders import write_atomically

STOP_LINE = "DEPLOYER STOP"  # written into the FIFO to end the reader; keepalived never writes it


class Keepalived:
    def __init__(self, folder: Path, *, binary: str = "keepalived") -> None:
        self.folder = Path(folder)
        self.binary = binary
        self.config_path = self.folder / "keepalived.conf"
        self.fifo = self.folder / "notify.fifo"
        self.pidfile = self.folder / "keepalived.pid"
        self.vrrp_pidfile = self.folder / "vrrp.pid"
        self.log_path = self.folder / "keepalived.log"
        self._process: subprocess.Popen[bytes] | None = None

    def prepare(self, config_text: str) -> None:
        """The folder (root's alone), the config and the FIFO, before keepalived starts."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.write_file(self.config_path, config_text)
        if self.fifo.exists() and not stat.S_ISFIFO(self.fifo.lstat().st_mode):
            self.fifo.unlink()
        if not self.fifo.exists():
            os.mkfifo(self.fifo, 0o600)

    def write_file(self, path: Path, text: str) -> None:
        """Atomically: keepalived reads a track file whenever it changes, and must never see half of one. Not
        durable: the agent writes them again from what it sees after any restart."""
        write_atomically(path, text, durable=False, error=ClusterError)

    def start(self) -> int:
        for stale in (self.pidfile, self.vrrp_pidfile):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        try:
            log = self.log_path.open("ab")
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "-n",
                    "-l",
                    "-D",
                    "-f",
                    str(self.config_path),
                    "-p",
                    str(self.pidfile),
                    "-r",
                    str(self.vrrp_pidfile),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()
        except FileNotFoundError:
            raise ClusterError(f"{self.binary} is not installed (Debian: apt-get install keepalived)") from None
        except OSError as exc:
            raise ClusterError(f"cannot start {self.binary}: {exc.strerror}") from None
        return self._process.pid

    def stop_leftover(self, timeout: float = 5.0) -> int | None:
        """Stop the keepalived a dead agent left running (found by its pidfile and its command line); its pid.

        An agent that was killed leaves its keepalived behind, still following the same config; a second one
        beside it would fight it for the buckets. SIGTERM: its master instances send priority 0, so the peers
        take its buckets at once, until the new keepalived takes the home buckets back.
        """
        try:
            pid = int(self.pidfile.read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
        except OSError as exc:
            raise ClusterError(f"cannot check the keepalived of {self.pidfile}: {exc.strerror}") from None
        if (
            not command
            or Path(command[0].decode(errors="replace")).name != Path(self.binary).name
            or str(self.config_path).encode() not in command
        ):
            return None  # a pid reused by another process: not ours to stop
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        return pid

    def version(self, timeout: float = 5.0) -> str:
        """The first line `keepalived --version` prints ("Keepalived v2.2.7 (01/16,2022)"): it is installed and runs."""
        try:
            result = subprocess.run(
                [self.binary, "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise ClusterError(f"{self.binary} is not installed (Debian: apt-get install keepalived)") from None
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{self.binary} --version did not end within {timeout:g} s") from None
        except OSError as exc:
            raise ClusterError(f"cannot run {self.binary}: {exc.strerror}") from None
        lines = (result.stdout + result.stderr).strip().splitlines()
        if result.returncode != 0 or not lines:
            raise ClusterError(f"{self.binary} --version failed with exit code {result.returncode}")
        return lines[0].strip()[:100]

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def pid(self) -> int | None:
        return self._process.pid if self.running() else None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to its pid: its master instances send priority 0, so the peers take over at once."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def notices(self) -> Iterator[str]:
        """The FIFO's lines, until STOP_LINE. Opened read-write, so a restart of keepalived is not an end of file."""
        fd = os.open(self.fifo, os.O_RDWR)
        with os.fdopen(fd, "r", buffering=1) as fifo:
            for line in fifo:
                if line.strip() == STOP_LINE:
                    return
                yield line

    def end_notices(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, f"{STOP_LINE}\n".encode())
            finally:
                os.close(fd)


def _running(pid: int) -> bool:
    """Whether `pid` runs: an exited process its new parent has not reaped yet (a zombie) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
