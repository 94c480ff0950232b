"""The manifest HEAD against a registry of the test's own on loopback: each status as an answer, the login sent,
a Bearer challenge answered with a token first, a registry that does not answer."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from deployer.adapters.registry_manifest import ACCEPT, manifest_answer
from deployer.config import RegistryAuth, parse
from deployer.plan.image_wait import ManifestAnswer

LOGIN = RegistryAuth(registry="127.0.0.1", username="deploy", password="registry-pass-81c2")
BASIC = "Basic " + base64.b64encode(b"deploy:registry-pass-81c2").decode()


@pytest.fixture
def registry():
    """A loopback registry: `tags` it has; with `bearer`, it challenges and wants the token its realm gives."""
    state = {"tags": {"v1"}, "bearer": False, "status": None, "seen": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, status, headers=(), body=b""):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def do_HEAD(self):  # noqa: N802 - the http.server API
            state["seen"].append((self.command, self.path, dict(self.headers)))
            if state["status"]:
                return self.answer(state["status"])
            if state["bearer"] and self.headers.get("Authorization") != "Bearer t0ken":
                realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
                return self.answer(401, [("WWW-Authenticate", f'Bearer realm="{realm}",service="reg"')])
            tag = self.path.rsplit("/", 1)[-1]
            self.answer(200 if self.path.startswith("/v2/web/manifests/") and tag in state["tags"] else 404)

        def do_GET(self):  # noqa: N802 - the token endpoint
            state["seen"].append((self.command, self.path, dict(self.headers)))
            good = self.headers.get("Authorization") == BASIC and "service=reg" in self.path
            self.answer(200 if good else 401, body=json.dumps({"token": "t0ken"}).encode() if good else b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def app_of(registry):
    web = {"image": f"{registry}/web", "ports": [{"external": 8000, "container": 8080, "blue": 8001, "green": 8002}]}
    return parse({"apps": {"web": web}}, path=Path("/etc/deployer.toml"), environ={}).app("web")


def test_a_tag_the_registry_has_is_present_and_one_it_lacks_is_missing(registry):
    address, state = registry
    app = app_of(address)
    assert [manifest_answer(app, tag, LOGIN) for tag in ("v1", "v2")] == [
        ManifestAnswer.PRESENT,
        ManifestAnswer.MISSING,
    ]
    method, path, headers = state["seen"][0]
    assert (method, path, headers["Accept"], headers["Authorization"]) == (
        "HEAD",
        "/v2/web/manifests/v1",
        ACCEPT,
        BASIC,
    )


def test_a_bearer_challenge_is_answered_with_the_realms_token(registry):
    address, state = registry
    state["bearer"] = True
    assert manifest_answer(app_of(address), "v1", LOGIN) == ManifestAnswer.PRESENT
    assert [(m, p.split("?")[0]) for m, p, _ in state["seen"]] == [
        ("HEAD", "/v2/web/manifests/v1"),
        ("GET", "/token"),
        ("HEAD", "/v2/web/manifests/v1"),
    ]
    assert manifest_answer(app_of(address), "v1", None) == ManifestAnswer.REFUSED  # no login: no token


@pytest.mark.parametrize(
    "status, answer",
    [
        (401, ManifestAnswer.REFUSED),
        (403, ManifestAnswer.REFUSED),
        (500, ManifestAnswer.OTHER),
        (503, ManifestAnswer.OTHER),
    ],
)
def test_other_statuses_are_refused_or_other(registry, status, answer):
    address, state = registry
    state["status"] = status
    assert manifest_answer(app_of(address), "v1", LOGIN) == answer


def test_a_registry_that_does_not_answer_is_other():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert manifest_answer(app_of(f"127.0.0.1:{port}"), "v1", LOGIN, timeout=2) == ManifestAnswer.OTHER
