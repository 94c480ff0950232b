"""The signed client against servers that answer what they like: small `http.server` threads on 127.0.0.1.

A host the controller talks to may be compromised, or someone on the path may answer for it. The client follows
no redirect, gives each request one deadline for the whole exchange, reads no more than its cap, and acts only on
a JSON object.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from deployer.adapters.api_client import SignedClient
from deployer.errors import DeployerError, InvalidUrl, Redirected, UnexpectedAnswer
from support.http_answers import Server, answering_servers, send
from support.integration import missing


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    with answering_servers() as start:
        yield start


def unsigned(method: str, host: str, path: str, body: bytes) -> dict[str, str]:
    return {"X-Deployer-Signature": "test"}


def client(url: str, **kwargs: object) -> SignedClient:
    return SignedClient(url, unsigned, **kwargs)  # type: ignore[arg-type]


def test_an_honest_answer_is_returned(serve):
    server = serve(send(202, b'{"job": "job-00000000000000aa"}'))
    assert client(server.url).request("POST", "/deploy", b"{}") == (202, {"job": "job-00000000000000aa"})
    assert server.paths == ["/deploy"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_from_a_host_is_a_refusal_and_is_not_followed(serve, status):
    elsewhere = serve(send(202, b'{"job": "job-00000000000000bb"}'))
    host = serve(send(status, b"{}", {"Location": elsewhere.url + "/deploy"}))
    with pytest.raises(Redirected) as refused:
        client(host.url).request("POST", "/deploy", b'{"app": "web"}')
    assert f"answered {status}, a redirect" in str(refused.value)
    assert elsewhere.paths == []


def trickle(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.05)


def trickled_headers(handler: BaseHTTPRequestHandler) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(1000):
        handler.wfile.write(f"X-{i}: 1\r\n".encode())
        handler.wfile.flush()
        time.sleep(0.05)


@pytest.mark.parametrize("answer", [trickle, trickled_headers], ids=["body", "headers"])
def test_a_host_that_trickles_its_answer_is_cut_off_at_the_request_deadline(serve, answer):
    server = serve(answer)
    started = time.monotonic()
    with pytest.raises(DeployerError) as late:
        client(server.url, timeout=0.6).request("GET", "/apps/web")
    assert time.monotonic() - started < 2.0  # each read alone arrives well within 0.6 s
    assert "did not finish its answer within 0.6 s" in str(late.value)


def test_an_answer_over_the_byte_cap_is_not_read_whole(serve):
    server = serve(send(200, b'{"tag": "' + b"x" * (4 << 20) + b'"}'))
    with pytest.raises(UnexpectedAnswer, match="over 65536 bytes"):
        client(server.url, max_bytes=65536).request("GET", "/apps/web")


def test_a_compressed_answer_is_refused_rather_than_inflated(serve):
    server = serve(send(200, b"\x1f\x8b" + b"\0" * 20, {"Content-Encoding": "gzip"}))
    with pytest.raises(UnexpectedAnswer, match="gzip encoding"):
        client(server.url).request("GET", "/apps/web")


@pytest.mark.parametrize(
    "body", [b"[]", b'"job-00000000000000aa"', b"null", b"7", b"not json", b"\xff\xfe", b"[" * 100_000]
)
def test_an_answer_that_is_not_a_json_object_is_unexpected(serve, body):
    server = serve(send(202, body))
    with pytest.raises(UnexpectedAnswer, match="other than a JSON object"):
        client(server.url).request("POST", "/deploy", b"{}")


def test_a_refusal_s_error_text_is_cut_and_its_control_characters_escaped(serve):
    server = serve(send(500, b'{"error": "boom\\u001b[2J\\n' + b"y" * 500 + b'"}'))
    with pytest.raises(DeployerError) as refused:
        client(server.url).request("GET", "/apps/web")
    message = str(refused.value)
    assert "boom\\x1b[2J\\n" in message and "\x1b" not in message and len(message) < 300


@pytest.mark.parametrize("url", ["10.0.0.1:8000", "deploy.example", "ftp://10.0.0.1", "http://", "file:///etc"])
def test_a_url_without_an_http_scheme_and_a_host_is_a_clear_error(url):
    with pytest.raises(InvalidUrl, match="is not a server URL: it must start with https://"):
        client(url)


@pytest.fixture
def private_ca(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: its own CA file, and the server's TLS context."""
    if shutil.which("openssl") is None:
        missing("openssl is not installed (scripts/install-deps installs it)")
    cert, key = tmp_path / "ca.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


def test_a_host_with_a_private_ca_is_trusted_through_its_ca_file_only(serve, private_ca):
    ca_file, context = private_ca
    server = serve(send(200, b'{"tag": "v1"}'), context=context)
    with pytest.raises(DeployerError, match="cannot reach https://127.0.0.1:.*SSLError"):
        client(server.url).request("GET", "/apps/web")
    assert client(server.url, ca_file=ca_file).request("GET", "/apps/web") == (200, {"tag": "v1"})
