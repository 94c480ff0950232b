"""Many new flows from many source addresses, counting which release answered each: for the canary's split.

Runs inside an outside namespace (stdlib only). Each flow is a new tcp connection (one GET) or a new udp socket
(one datagram), from the source addresses in turn, so every flow is a new conntrack entry. HOST and the sources
are of one family, IPv4 or IPv6. Prints one JSON object:
{"tcp" or "udp": {source address: {version: count}}, "failed": [first few errors]}.

    python3 spread.py HOST PORT tcp|udp COUNT ADDRESS[,ADDRESS...]
"""

from __future__ import annotations

import json
import socket
import sys
from collections import defaultdict


def tcp_version(host: str, port: int, source: str) -> str:
    with socket.create_connection((host, port), timeout=5, source_address=(source, 0)) as sock:
        name = f"[{host}]" if ":" in host else host
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    body = data.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
    return body.split(" ", 1)[0].strip()


def udp_version(host: str, port: int, source: str) -> str:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(2)
        sock.sendto(b"spread", (host, port))
        return sock.recv(2048).decode("utf-8", "replace").split(" ", 1)[0]


def main(argv: list[str]) -> int:
    host, port, protocol, count, sources = argv[0], int(argv[1]), argv[2], int(argv[3]), argv[4].split(",")
    ask = tcp_version if protocol == "tcp" else udp_version
    seen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failed: list[str] = []
    for number in range(count):
        source = sources[number % len(sources)]
        try:
            seen[source][ask(host, port, source)] += 1
        except OSError as exc:
            failed.append(f"{source}: {exc}")
    print(json.dumps({protocol: seen, "failed": failed[:5], "failures": len(failed)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
