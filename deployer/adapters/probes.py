"""Client probes over sockets: the health checks of an instance, and whether the maintenance responder answers.

The gate that decides on their results (host/health.py) is pure; this is the only place they touch the network.
"""

from __future__ import annotations

import http.client
import socket
import ssl

from deployer.config import HealthCheck
from deployer.plan.health import Probe, ProbeResult
from deployer.plan.maintenance import RESPONDER_HEADER


def http_probe(host: str, port: int, path: str, expect_status: int, timeout: float) -> Probe:
    def probe() -> ProbeResult:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request("GET", path, headers={"User-Agent": "deployer-health", "Connection": "close"})
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            return ProbeResult(False, f"GET {path}: {type(exc).__name__}: {exc}".rstrip(": "))
        finally:
            connection.close()
        if status != expect_status:
            return ProbeResult(False, f"GET {path}: status {status}, expected {expect_status}")
        return ProbeResult(True, f"GET {path}: {status}")

    return probe


def tcp_probe(host: str, port: int, timeout: float, hold: float = 0.2) -> Probe:
    """A TCP connect that the peer keeps open for `hold` seconds.

    A bare connect is not enough: Docker's userland proxy on the published set port accepts a
    connection even when nothing listens in the container, then closes it at once.
    """

    def probe() -> ProbeResult:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.settimeout(hold)
                try:
                    data = sock.recv(1)
                except TimeoutError:
                    return ProbeResult(True, f"tcp {port}: open")
                if data:
                    return ProbeResult(True, f"tcp {port}: open (banner)")
                return ProbeResult(False, f"tcp {port}: closed by peer right after connect")
        except OSError as exc:
            return ProbeResult(False, f"tcp {port}: {exc.strerror or exc}")

    return probe


def probe_for(check: HealthCheck, host: str, port: int) -> Probe:
    if check.type == "http":
        return http_probe(host, port, check.path, check.expect_status, check.timeout)
    return tcp_probe(host, port, check.timeout)


def check_responder(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> str | None:
    """None when a maintenance responder answers on the port, else what is wrong."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/", headers={"User-Agent": "deployer-check"})
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}".rstrip(": ")
    finally:
        connection.close()
    if response.status != 503 or response.getheader(RESPONDER_HEADER) is None:
        return f"something else answers there (status {response.status})"
    return None


# Docker talks plain HTTP to a registry on a loopback address unless told otherwise, and HTTPS to any other.
_PLAIN_HTTP_HOSTS = ("localhost", "127.", "[::1]")


def check_registry(registry: str, timeout: float = 3.0) -> str | None:
    """None when the registry (`host[:port]`) answers its API root, else why not.

    Liveness only: any answer below 500 counts (401 is what a registry with a login says), and so does a
    certificate this process does not trust (Docker may trust it); no credential is sent.
    """
    host, _, port = registry.rpartition(":") if registry.rsplit(":", 1)[-1].isdigit() else (registry, "", "")
    plain = host.startswith(_PLAIN_HTTP_HOSTS)
    kind = http.client.HTTPConnection if plain else http.client.HTTPSConnection
    connection = kind(host.strip("[]"), int(port) if port else (80 if plain else 443), timeout=timeout)
    try:
        connection.request("GET", "/v2/", headers={"User-Agent": "deployer-check"})
        status = connection.getresponse().status
    except ssl.SSLCertVerificationError:
        return None
    except (OSError, http.client.HTTPException) as exc:
        return f"registry {registry}: {type(exc).__name__}: {exc}".rstrip(": ")
    finally:
        connection.close()
    return f"registry {registry}: answers {status}" if status >= 500 else None


class Probes:
    """The prober the engine, the modes and the watchdog receive: real sockets."""

    def health(self, check: HealthCheck, host: str, port: int) -> Probe:
        return probe_for(check, host, port)

    def responder(self, port: int) -> str | None:
        return check_responder(port)
