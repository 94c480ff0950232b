"""The cluster test bed's client: runs inside the client namespace, from many source addresses, and prints JSON.

    python3 cluster_client.py once ADDRESS TCP UDP SOURCES
    python3 cluster_client.py load ADDRESS TCP UDP SOURCES SECONDS STOPFILE

`once`: from each source, one HTTP GET on a new connection and one UDP datagram; every reply is kept, so a
datagram answered twice shows as two. `load`: until SECONDS pass or STOPFILE appears, new connections in turn
from every source, one keep-alive connection per source opened at the start and reused, and UDP datagrams from
every source; each request's outcome with its times. The demo app answers "<version> ..." and each host runs it
with its own name as the version, so a reply names the host that answered. Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import socket
import sys
import threading
import time

HTTP_TIMEOUT = 10.0  # a SYN lost in a takeover is sent again after 1 s, then 3 s


def http_get(address: str, port: int, source: str) -> str:
    conn = http.client.HTTPConnection(address, port, timeout=HTTP_TIMEOUT, source_address=(source, 0))
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            return f"error: status {response.status}"
        return body.split(" ", 1)[0]
    except OSError as exc:
        return f"error: {type(exc).__name__}: {exc}"
    finally:
        conn.close()


def udp_replies(address: str, port: int, source: str, wait: float = 0.5) -> list[str]:
    with socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(b"q", (address, port))
        replies, deadline = [], time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if ready:
                replies.append(sock.recv(2048).decode().split(" ", 1)[0])
        return replies


def once(address: str, tcp: int, udp: int, sources: list[str]) -> dict:
    results: dict[str, dict] = {}

    def one(source: str) -> None:
        results[source] = {"http": http_get(address, tcp, source), "udp": udp_replies(address, udp, source)}

    threads = [threading.Thread(target=one, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def load(address: str, tcp: int, udp: int, sources: list[str], seconds: float, stopfile: str) -> dict:
    start = time.monotonic()
    end = start + seconds
    stop = threading.Event()
    records: dict[str, list] = {"new": [], "keepalive": [], "udp": []}
    lock = threading.Lock()

    def now() -> float:
        return round(time.monotonic() - start, 4)

    def record(kind: str, item: list) -> None:
        with lock:
            records[kind].append(item)

    def new_connections(offset: int) -> None:
        i = offset
        while not stop.is_set():
            source = sources[i % len(sources)]
            began = now()
            record("new", [began, now(), source, http_get(address, tcp, source)])
            i += 4

    def keepalive(source: str) -> None:
        conn = http.client.HTTPConnection(address, tcp, timeout=HTTP_TIMEOUT, source_address=(source, 0))
        reconnects = 0
        while not stop.is_set():
            began = now()
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode()
                result = body.split(" ", 1)[0] if response.status == 200 else f"error: status {response.status}"
            except OSError as exc:
                result = f"error: {type(exc).__name__}: {exc}"
                conn.close()
                reconnects += 1
                conn = http.client.HTTPConnection(address, tcp, timeout=HTTP_TIMEOUT, source_address=(source, 0))
            record("keepalive", [began, now(), source, result])
            stop.wait(0.05)
        conn.close()

    def datagrams() -> None:
        socks = {}
        for source in sources:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source, 0))
            sock.setblocking(False)
            socks[sock] = source
        seq = 0
        sent: dict[tuple[str, int], float] = {}
        answers: dict[tuple[str, int], list] = {}
        while not stop.is_set():
            for sock, source in socks.items():
                sock.sendto(f"{seq}".encode(), (address, udp))
                sent[(source, seq)] = now()
            seq += 1
            deadline = time.monotonic() + 0.05
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select(list(socks), [], [], left)
                for sock in ready:
                    with_version = sock.recv(2048).decode().split(" ", 1)
                    if len(with_version) == 2 and with_version[1].strip().isdigit():
                        answers.setdefault((socks[sock], int(with_version[1])), []).append([now(), with_version[0]])
        time.sleep(0.5)
        for sock in socks:
            with contextlib.suppress(OSError, ValueError, IndexError):
                while True:
                    with_version = sock.recv(2048).decode().split(" ", 1)
                    answers.setdefault((socks[sock], int(with_version[1])), []).append([now(), with_version[0]])
            sock.close()
        for (source, number), at in sent.items():
            records["udp"].append([at, source, number, answers.get((source, number), [])])

    threads = [threading.Thread(target=new_connections, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=keepalive, args=(s,)) for s in sources]
    threads.append(threading.Thread(target=datagrams))
    for thread in threads:
        thread.start()
    print(json.dumps({"started": start}), flush=True)
    while time.monotonic() < end and not os.path.exists(stopfile):
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(HTTP_TIMEOUT + 5)
    return records


def main(argv: list[str]) -> None:
    mode, address, tcp, udp, sources = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4].split(",")
    if mode == "once":
        print(json.dumps(once(address, tcp, udp, sources)))
    else:
        print(json.dumps(load(address, tcp, udp, sources, float(argv[5]), argv[6])))


if __name__ == "__main__":
    main(sys.argv[1:])
