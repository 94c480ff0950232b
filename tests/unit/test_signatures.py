"""Signature checks, against values computed outside this code (GitHub's docs, openssl dgst -hmac)."""

import pytest

from deployer.errors import Unauthorized
from deployer.server import signatures

# GitHub's documented test vector ("Validating webhook deliveries").
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_EXPECTED = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# The worked example of docs/server.md; the signature was computed with:
#   printf '%s' "$CANONICAL" | openssl dgst -sha256 -hmac "$SECRET"
SECRET = "3f1c9a7e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a"
BODY = b'{"app": "demo", "tag": "v1.4.2", "reason": "hotfix rollout"}'
BODY_SHA256 = "84108e2a1a8452fc38fcc8dfdafb679afd3222b02c70f39420b3e641a29b8778"
TIMESTAMP = 1767225600
NONCE = "n7Qk2VxW9pLm4RtY8sZa3c"
CANONICAL = f"deployer-v1\nPOST\n/deploy\nalice\n1767225600\nn7Qk2VxW9pLm4RtY8sZa3c\n{BODY_SHA256}"
SIGNATURE = "v1=186b8593e100d08740e1bc4decba51a5e1560ad054bc83160feab9f81ea435de"


# --- GitHub ----------------------------------------------------------------------------------------


def test_github_signature_matches_githubs_documented_vector():
    assert signatures.github_signature(GITHUB_SECRET, GITHUB_BODY) == GITHUB_EXPECTED
    signatures.verify_github(GITHUB_SECRET, GITHUB_BODY, GITHUB_EXPECTED)


@pytest.mark.parametrize("secret, body, header, message", [
    (None, GITHUB_BODY, GITHUB_EXPECTED, "webhook deliveries are refused: no GitHub secret is configured "
                                         "([server] github_secret_file or github_secret_env)"),
    ("", GITHUB_BODY, GITHUB_EXPECTED, "webhook deliveries are refused: no GitHub secret is configured "
                                       "([server] github_secret_file or github_secret_env)"),
    (GITHUB_SECRET, GITHUB_BODY, None, "missing X-Hub-Signature-256 header"),
    (GITHUB_SECRET, GITHUB_BODY, "", "missing X-Hub-Signature-256 header"),
    (GITHUB_SECRET, GITHUB_BODY + b" ", GITHUB_EXPECTED, "X-Hub-Signature-256 does not match the body"),
    ("another secret", GITHUB_BODY, GITHUB_EXPECTED, "X-Hub-Signature-256 does not match the body"),
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_EXPECTED.replace("sha256=", "sha1="),
     "X-Hub-Signature-256 does not match the body"),
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_EXPECTED.upper(), "X-Hub-Signature-256 does not match the body"),
    (GITHUB_SECRET, GITHUB_BODY, "sha256=\u00e9", "X-Hub-Signature-256 does not match the body"),
])
def test_github_refusals_never_reveal_the_expected_value(secret, body, header, message):
    with pytest.raises(Unauthorized) as caught:
        signatures.verify_github(secret, body, header)
    assert str(caught.value) == message
    assert GITHUB_EXPECTED[7:] not in str(caught.value)


# --- manual requests -------------------------------------------------------------------------------


def test_the_canonical_string_and_signature_of_the_documented_example():
    assert signatures.body_sha256(BODY) == BODY_SHA256
    assert signatures.canonical_string("post", "/deploy", "alice", TIMESTAMP, NONCE, BODY) == CANONICAL
    assert signatures.manual_signature(SECRET, CANONICAL) == SIGNATURE
    assert signatures.sign_request(SECRET, method="POST", path="/deploy", key_id="alice", timestamp=TIMESTAMP,
                                   nonce=NONCE, body=BODY) == {
        "X-Deployer-Key": "alice", "X-Deployer-Timestamp": "1767225600", "X-Deployer-Nonce": NONCE,
        "X-Deployer-Signature": SIGNATURE}


def test_a_get_with_an_empty_body_signs_the_hash_of_nothing():
    # openssl: printf 'deployer-v1\nGET\n/jobs/job-0123456789abcdef\nalice\n1767225600\nn7Qk...a3d\n<sha256 of "">'
    headers = signatures.sign_request(SECRET, method="GET", path="/jobs/job-0123456789abcdef", key_id="alice",
                                      timestamp=TIMESTAMP, nonce="n7Qk2VxW9pLm4RtY8sZa3d", body=b"")
    assert headers["X-Deployer-Signature"] == "v1=965a361e4a24b352215ab0bb1a557d427b8e31de151283683305be056674a7cf"


def test_the_query_string_is_bound_exactly_as_sent():
    assert signatures.request_target("/audit", b"") == "/audit"
    assert signatures.request_target("/audit", b"app=demo&event=deploy.%2A") == "/audit?app=demo&event=deploy.%2A"
    assert signatures.request_target("/audit", "limit=1&app=demo") == "/audit?limit=1&app=demo"  # not reordered
    # The GET /audit example of docs/server.md; openssl:
    #   printf 'deployer-v1\nGET\n/audit?app=demo&since=24h&event=deploy.%%2A\nalice\n1767225600\n
    #           n7Qk2VxW9pLm4RtY8sZa3e\n<sha256 of "">' | openssl dgst -sha256 -hmac "$SECRET"
    target = signatures.request_target("/audit", b"app=demo&since=24h&event=deploy.%2A")
    headers = signatures.sign_request(SECRET, method="GET", path=target, key_id="alice", timestamp=TIMESTAMP,
                                      nonce="n7Qk2VxW9pLm4RtY8sZa3e", body=b"")
    assert headers["X-Deployer-Signature"] == "v1=c34a0eb716fef9567bdaabc5b7af362b421ed55c314b1e9d7a9c2d34e8b462ec"


AUDIT_TOKEN = "audit-read-token-3c9e51f0a7d2"


def test_the_audit_token_is_accepted_as_a_bearer_token_only():
    signatures.verify_bearer(AUDIT_TOKEN, f"Bearer {AUDIT_TOKEN}")
    signatures.verify_bearer(AUDIT_TOKEN, f"bearer  {AUDIT_TOKEN} ")


@pytest.mark.parametrize("token, header, message", [
    (None, f"Bearer {AUDIT_TOKEN}", "no audit token is configured ([server] audit_token_file or audit_token_env)"),
    (AUDIT_TOKEN, None, "the Authorization header must be: Bearer <token>"),
    (AUDIT_TOKEN, AUDIT_TOKEN, "the Authorization header must be: Bearer <token>"),
    (AUDIT_TOKEN, f"Basic {AUDIT_TOKEN}", "the Authorization header must be: Bearer <token>"),
    (AUDIT_TOKEN, "Bearer ", "the Authorization header must be: Bearer <token>"),
    (AUDIT_TOKEN, f"Bearer {AUDIT_TOKEN[:-1]}", "the bearer token does not match"),
    (AUDIT_TOKEN, f"Bearer {AUDIT_TOKEN}0", "the bearer token does not match"),
    (AUDIT_TOKEN, "Bearer \u00e9t\u00e9", "the bearer token does not match"),
])
def test_a_wrong_audit_token_is_refused_without_revealing_it(token, header, message):
    with pytest.raises(Unauthorized) as caught:
        signatures.verify_bearer(token, header)
    assert str(caught.value) == message


def signed(**changes):
    headers = {"X-Deployer-Key": "alice", "X-Deployer-Timestamp": str(TIMESTAMP), "X-Deployer-Nonce": NONCE,
               "X-Deployer-Signature": SIGNATURE}
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


def verify(headers, *, method="POST", path="/deploy", body=BODY, now=TIMESTAMP + 10, keys=None):
    signatures.verify_manual(keys or {"alice": SECRET}, signatures.read_signed_headers(headers), method=method,
                             path=path, body=body, now=now)


def test_the_documented_example_verifies_within_the_window():
    verify(signed())
    verify(signed(), now=TIMESTAMP + 300)
    verify(signed(), now=TIMESTAMP - 300)


@pytest.mark.parametrize("headers, message", [
    (signed(**{"X-Deployer-Key": None}), "missing X-Deployer-Key header"),
    (signed(**{"X-Deployer-Timestamp": None}), "missing X-Deployer-Timestamp header"),
    (signed(**{"X-Deployer-Nonce": None}), "missing X-Deployer-Nonce header"),
    (signed(**{"X-Deployer-Signature": None}), "missing X-Deployer-Signature header"),
    (signed(**{"X-Deployer-Timestamp": "1767225600.5"}), "X-Deployer-Timestamp must be a unix time in whole seconds"),
    (signed(**{"X-Deployer-Timestamp": "-1"}), "X-Deployer-Timestamp must be a unix time in whole seconds"),
    (signed(**{"X-Deployer-Nonce": "short"}), "X-Deployer-Nonce must be 16 to 128 letters, digits, '-' or '_'"),
    (signed(**{"X-Deployer-Nonce": "n7Qk2VxW9pLm4RtY8s/a3c"}),
     "X-Deployer-Nonce must be 16 to 128 letters, digits, '-' or '_'"),
    (signed(**{"X-Deployer-Signature": SIGNATURE[3:]}), "X-Deployer-Signature must be v1=<hex>"),
])
def test_malformed_headers_are_refused_before_any_secret_is_used(headers, message):
    with pytest.raises(Unauthorized) as caught:
        signatures.read_signed_headers(headers)
    assert str(caught.value) == message


@pytest.mark.parametrize("change, message", [
    ({"now": TIMESTAMP + 301}, "the timestamp is more than 300 s away from the server's clock (check the client's clock)"),
    ({"now": TIMESTAMP - 301}, "the timestamp is more than 300 s away from the server's clock (check the client's clock)"),
    ({"keys": {"bob": SECRET}}, "unknown key id"),
    ({"keys": {"alice": SECRET + "x"}}, "X-Deployer-Signature does not match the request"),
    ({"method": "PUT"}, "X-Deployer-Signature does not match the request"),
    ({"path": "/jobs/job-0123456789abcdef"}, "X-Deployer-Signature does not match the request"),
    ({"body": BODY.replace(b"v1.4.2", b"v1.4.3")}, "X-Deployer-Signature does not match the request"),
])
def test_a_change_to_any_bound_part_is_refused(change, message):
    with pytest.raises(Unauthorized) as caught:
        verify(signed(), **change)
    assert str(caught.value) == message
    assert SIGNATURE[3:] not in str(caught.value)


@pytest.mark.parametrize("headers", [
    signed(**{"X-Deployer-Key": "mallory"}),  # the key id is part of what is signed, too
    signed(**{"X-Deployer-Nonce": "n7Qk2VxW9pLm4RtY8sZa3X"}),
    signed(**{"X-Deployer-Timestamp": str(TIMESTAMP + 1)}),
    signed(**{"X-Deployer-Signature": SIGNATURE[:-1] + "f"}),
])
def test_changed_headers_break_the_signature(headers):
    with pytest.raises(Unauthorized):
        verify(headers, keys={"alice": SECRET, "mallory": SECRET})


def test_a_nonce_is_remembered_past_the_last_moment_its_timestamp_is_accepted():
    window = signatures.WINDOW_SECONDS
    assert window == 300
    # A timestamp from the future stays valid until timestamp + window: the nonce must outlive that.
    assert signatures.nonce_expiry(TIMESTAMP, now=TIMESTAMP - 300) >= TIMESTAMP + window
    assert signatures.nonce_expiry(TIMESTAMP, now=TIMESTAMP + 300) >= TIMESTAMP + 300 + window
    assert signatures.nonce_expiry(TIMESTAMP, now=TIMESTAMP) == TIMESTAMP + 2 * window
