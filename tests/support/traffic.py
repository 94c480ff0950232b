"""A load client that records every request, for the zero-downtime tests and the benchmarks.

Runs as a separate process (on the host or inside a network namespace) until SIGTERM, SIGINT
or --duration, and writes one JSON line per request to --out:

    http-new        a new TCP connection for every request (Connection: close)
    http-keepalive  one connection reused until the server says Connection: close or it breaks
    udp             one socket (one source port: one conntrack flow) sending numbered datagrams

Each record carries wall-clock times, so the test can compare them with the moments the
deployer flipped the rules. Stdlib only: it runs with whatever python3 the host has.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time

stopping = False


def _stop(*_: object) -> None:
    global stopping
    stopping = True


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """Read one HTTP response with Content-Length; return status, headers, body, leftover bytes."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a response" if not buffer else "truncated headers")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("truncated body")
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def http_new(host: str, port: int, out, pause: float, timeout: float) -> None:
    conn_id = 0
    while not stopping:
        conn_id += 1
        started = time.time()
        record = {"kind": "http-new", "conn": conn_id, "conn_t": started, "t": started}
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                status, _, body, _ = _read_response(sock, b"")
            record.update(ok=status == 200, status=status, **_parse_body(body))
        except (OSError, ValueError, IndexError) as exc:
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        record["t_end"] = time.time()
        out.write(json.dumps(record) + "\n")
        time.sleep(pause)


def http_keepalive(host: str, port: int, out, pause: float, timeout: float) -> None:
    conn_id = 0
    sock = None
    buffer = b""
    conn_t = 0.0
    while not stopping:
        if sock is None:
            conn_id += 1
            conn_t = time.time()
            buffer = b""
            try:
                sock = socket.create_connection((host, port), timeout=timeout)
            except OSError as exc:
                out.write(
                    json.dumps(
                        {
                            "kind": "http-keepalive",
                            "conn": conn_id,
                            "conn_t": conn_t,
                            "t": conn_t,
                            "t_end": time.time(),
                            "ok": False,
                            "error": f"connect: {type(exc).__name__}: {exc}",
                        }
                    )
                    + "\n"
                )
                sock = None
                time.sleep(pause)
                continue
        started = time.time()
        record = {"kind": "http-keepalive", "conn": conn_id, "conn_t": conn_t, "t": started}
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            status, headers, body, buffer = _read_response(sock, buffer)
            record.update(ok=status == 200, status=status, **_parse_body(body))
            if headers.get("connection", "").lower() == "close":
                record["closed_by_server"] = True
                sock.close()
                sock = None
        except (OSError, ValueError, IndexError) as exc:
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            sock.close()
            sock = None
        record["t_end"] = time.time()
        out.write(json.dumps(record) + "\n")
        time.sleep(pause)
    if sock is not None:
        sock.close()


def udp(host: str, port: int, out, pause: float, timeout: float) -> None:
    """Request/response over one socket; a reply that comes after its timeout still counts as late."""
    ipv6 = ":" in host
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("::" if ipv6 else "0.0.0.0", 0))
    sock.connect((host, port))
    number = 0
    while not stopping:
        number += 1
        sent = time.time()
        record = {"kind": "udp", "id": number, "t": sent, "answered": False}
        try:
            sock.send(f"req-{number}".encode())
        except OSError as exc:
            # ECONNREFUSED from an ICMP port unreachable of an earlier datagram: send again once.
            record["error"] = f"send: {exc}"
        deadline = sent + timeout
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                data = sock.recv(2048).decode("utf-8", "replace")
            except TimeoutError:
                break
            except OSError as exc:
                record["error"] = f"recv: {exc}"
                continue
            version, _, payload = data.partition(" ")
            if payload.strip() == f"req-{number}":
                record.update(answered=True, version=version, t_reply=time.time())
                break
        out.write(json.dumps(record) + "\n")
        time.sleep(pause)


def _parse_body(body: bytes) -> dict[str, str]:
    version, _, client = body.decode("utf-8", "replace").strip().partition(" ")
    return {"version": version, "client": client}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["http-new", "http-keepalive", "udp"])
    parser.add_argument("target", help="HOST:PORT, or [IPv6]:PORT")
    parser.add_argument("--out", required=True, help="JSON lines file to write")
    parser.add_argument("--pause", type=float, default=0.005, help="seconds between requests")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a request may take")
    parser.add_argument("--duration", type=float, default=600.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [IPv6]:port
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGALRM, _stop)
    signal.setitimer(signal.ITIMER_REAL, args.duration)
    run = {"http-new": http_new, "http-keepalive": http_keepalive, "udp": udp}[args.mode]
    with open(args.out, "w", buffering=1) as out:
        run(host, int(port), out, args.pause, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
