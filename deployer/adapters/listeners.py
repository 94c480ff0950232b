"""The receiver's listening socket under `deployer serve`: bound once, or taken from systemd, and held for serve's life.

serve passes this one socket to every gunicorn it starts (`--bind fd://N`), so the socket outlives each of them: a
connection made while a dead gunicorn is started again waits in the socket's backlog and is answered by the next
one, instead of being refused. gunicorn closes only its own copy when it stops; the socket closes when serve exits.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from deployer.errors import DeployerError

# gunicorn's own default backlog, given to listen() explicitly: connections wait there while gunicorn restarts (about
# two seconds). The kernel caps it at net.core.somaxconn (4096 since Linux 5.4).
BACKLOG = 2048


def where(host: str, port: int) -> str:
    """host:port as [server] listen writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"


def bind(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on host:port, not inherited by children unless passed to them. Raises DeployerError."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # create_server's strerror repeats the address
        raise DeployerError(f"the receiver cannot listen on {where(host, port)}: {reason}") from None


def adopt(descriptor: int, host: str, port: int) -> socket.socket:
    """The listening socket systemd passed at `descriptor`, which must be a TCP socket listening on host:port.

    Its backlog is the one its `.socket` unit set (Backlog=). Raises DeployerError.
    """
    try:
        sock = socket.socket(fileno=descriptor)
    except OSError as exc:
        raise DeployerError(f"descriptor {descriptor} from systemd is not a socket: {exc.strerror or exc}") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        address = sock.getsockname() if sock.family in (socket.AF_INET, socket.AF_INET6) else None
    except OSError as exc:
        sock.close()
        raise DeployerError(f"the socket systemd passed cannot be read: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM or address is None or not listening:
        sock.close()
        raise DeployerError("the socket systemd passed is not a listening TCP socket: give its unit ListenStream=")
    if ipaddress.ip_address(address[0]) != ipaddress.ip_address(host) or address[1] != port:
        sock.close()
        raise DeployerError(
            f"the socket systemd passed listens on {where(address[0], address[1])}, but [server] listen is "
            f"{where(host, port)}: make its ListenStream= and [server] listen the same"
        )
    sock.set_inheritable(False)  # passed to gunicorn explicitly, never to a job's process or a hook
    return sock
