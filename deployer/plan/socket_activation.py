"""systemd's socket activation, read from the environment it sets: which descriptor is serve's listening socket.

A `.socket` unit binds the port and starts its service with the socket open at descriptor 3 (and the next ones),
`LISTEN_FDS` set to how many and `LISTEN_PID` to the service's pid (sd_listen_fds(3)). Variables that name another
pid were inherited from an activated parent and are not for this process. Pure: the caller passes the
environment and its own pid.
"""

from __future__ import annotations

from collections.abc import Mapping

from deployer.errors import ConfigError

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first descriptor systemd passes
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")  # what a process that took its sockets unsets


def _number(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    if not text.isascii() or not text.isdigit():
        raise ConfigError(f"{name} is {text!r}, not a number (systemd's socket activation sets it)")
    return int(text)


def addressed_to(environ: Mapping[str, str], pid: int) -> bool:
    """Whether systemd passed sockets to the process `pid`: LISTEN_PID is set and names it."""
    return "LISTEN_PID" in environ and _number(environ, "LISTEN_PID") == pid


def activated_descriptors(environ: Mapping[str, str], pid: int) -> tuple[int, ...]:
    """The descriptors systemd passed to the process `pid`, from 3 on; none unless LISTEN_PID names it."""
    if not addressed_to(environ, pid):
        return ()
    if "LISTEN_FDS" not in environ:
        raise ConfigError("LISTEN_PID names this process but LISTEN_FDS is not set (systemd sets both)")
    return tuple(range(LISTEN_FDS_START, LISTEN_FDS_START + _number(environ, "LISTEN_FDS")))


def receiver_descriptor(environ: Mapping[str, str], pid: int) -> int | None:
    """The listening socket a `.socket` unit passed to serve, or None when serve binds [server] listen itself.

    serve takes one socket: a unit that passes none or several is refused, since then no one of them is the
    receiver's by right.
    """
    if not addressed_to(environ, pid):
        return None
    descriptors = activated_descriptors(environ, pid)
    if len(descriptors) != 1:
        raise ConfigError(
            f"systemd passed {len(descriptors)} sockets (LISTEN_FDS): serve takes exactly one, "
            f"so give its .socket unit one ListenStream="
        )
    return descriptors[0]
