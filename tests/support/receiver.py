"""The receiver's test secrets and clock, and requests to its Flask test client: signed deliveries, signed calls."""

from __future__ import annotations

import json

from deployer import signatures
from support.github_payloads import PAYLOADS

GITHUB_SECRET = "gh-webhook-secret-5f2a9c"
ALICE_SECRET = "alice-operator-secret-8d41e7b2"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
CAP = 64 * 1024
# The [server] sub-table of the operator key alice, read from $ALICE_SECRET.
ALICE_KEY = '[server.operators.alice]\nsecret_env = "ALICE_SECRET"\n'
# Flask's test client sends `Host: localhost`: the receivers under test answer to that name.
TEST_HOST = "localhost"
NAMES = f'names = ["{TEST_HOST}"]\n'


def read_payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


class Clock:
    now = float(NOW)

    def __call__(self) -> float:
        return self.now


def deliver(
    client,
    body: bytes,
    *,
    event="release",
    delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958",
    hook_id="109948940",
    secret=GITHUB_SECRET,
    content_type="application/json",
    signature=None,
    headers=None,
):
    sent = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-ID": hook_id,
        "Content-Type": content_type,
    }
    if secret is not None:
        sent["X-Hub-Signature-256"] = signature or signatures.github_signature(secret, body)
    sent.update(headers or {})
    return client.post("/hooks/github", data=body, headers={k: v for k, v in sent.items() if v is not None})


def published(**release_changes) -> bytes:
    data = json.loads(read_payload("release-published.payload.json"))
    data["release"].update(release_changes)
    return json.dumps(data).encode()


def signed_call(
    client,
    method,
    path,
    body=b"",
    *,
    key_id="alice",
    secret=ALICE_SECRET,
    timestamp=NOW,
    nonce=None,
    content_type="application/json",
    host=TEST_HOST,
    sent_to=None,
):
    """A request signed for `host` and sent with that Host (or, to replay it elsewhere, with `sent_to`'s)."""
    nonce = nonce or f"nonce-{signed_call.counter:016d}"
    signed_call.counter += 1
    headers = signatures.sign_request(
        secret, method=method, host=host, path=path, key_id=key_id, timestamp=timestamp, nonce=nonce, body=body
    )
    if content_type:
        headers["Content-Type"] = content_type
    return client.open(path, method=method, data=body, headers=headers, base_url=f"http://{sent_to or host}")


signed_call.counter = 0


def redeploy_body(**fields) -> bytes:
    return json.dumps({"app": "web", **fields}).encode()


def assert_no_secret(events, *responses):
    text = json.dumps(events, default=str) + "".join(r.get_data(as_text=True) for r in responses)
    for secret in (GITHUB_SECRET, ALICE_SECRET):
        assert secret not in text
