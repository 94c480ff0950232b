"""Signature checks, against values computed outside this code (GitHub's docs, openssl dgst -hmac)."""

import pytest

from deployer import signatures
from deployer.errors import Unauthorized

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
HOST = "deploy.example:8443"
CANONICAL = f"deployer-v2\nPOST\n{HOST}\n/deploy\nalice\n1767225600\nn7Qk2VxW9pLm4RtY8sZa3c\n{BODY_SHA256}"
SIGNATURE = "v2=57afc850e1699d37c44835f2ab6d592761f121e4ba154bc8aa81b805fabdba71"


# --- GitHub ----------------------------------------------------------------------------------------


def test_github_signature_matches_githubs_documented_vector():
    assert signatures.github_signature(GITHUB_SECRET, GITHUB_BODY) == GITHUB_EXPECTED
    signatures.verify_github(GITHUB_SECRET, GITHUB_BODY, GITHUB_EXPECTED)


@pytest.mark.parametrize(
    "secret, body, header, message",
    [
        (
            None,
            GITHUB_BODY,
            GITHUB_EXPECTED,
            "webhook deliveries are refused: no GitHub secret is configured "
            "([server] github_secret_file or github_secret_env)",
        ),
        (
            "",
            GITHUB_BODY,
            GITHUB_EXPECTED,
            "webhook deliveries are refused: no GitHub secret is configured "
            "([server] github_secret_file or github_secret_env)",
        ),
        (GITHUB_SECRET, GITHUB_BODY, None, "missing X-Hub-Signature-256 header"),
        (GITHUB_SECRET, GITHUB_BODY, "", "missing X-Hub-Signature-256 header"),
        (GITHUB_SECRET, GITHUB_BODY + b" ", GITHUB_EXPECTED, "X-Hub-Signature-256 does not match the body"),
        ("another secret", GITHUB_BODY, GITHUB_EXPECTED, "X-Hub-Signature-256 does not match the body"),
        (
            GITHUB_SECRET,
            GITHUB_BODY,
            GITHUB_EXPECTED.replace("sha256=", "sha1="),
            "X-Hub-Signature-256 does not match the body",
        ),
        (GITHUB_SECRET, GITHUB_BODY, GITHUB_EXPECTED.upper(), "X-Hub-Signature-256 does not match the body"),
        (GITHUB_SECRET, GITHUB_BODY, "sha256=\u00e9", "X-Hub-Signature-256 does not match the body"),
    ],
)
def test_github_refusals_never_reveal_the_expected_value(secret, body, header, message):
    with pytest.raises(Unauthorized) as caught:
        signatures.verify_github(secret, body, header)
    assert str(caught.value) == message
    assert GITHUB_EXPECTED[7:] not in str(caught.value)


# --- manual requests -------------------------------------------------------------------------------


def test_the_canonical_string_and_signature_of_the_documented_example():
    assert signatures.body_sha256(BODY) == BODY_SHA256
    assert (
        signatures.canonical_string("post", "Deploy.Example:8443", "/deploy", "alice", TIMESTAMP, NONCE, BODY)
        == CANONICAL
    )
    assert signatures.manual_signature(SECRET, CANONICAL) == SIGNATURE
    assert signatures.sign_request(
        SECRET, method="POST", host=HOST, path="/deploy", key_id="alice", timestamp=TIMESTAMP, nonce=NONCE, body=BODY
    ) == {
        "X-Deployer-Key": "alice",
        "X-Deployer-Timestamp": "1767225600",
        "X-Deployer-Nonce": NONCE,
        "X-Deployer-Signature": SIGNATURE,
    }


def test_a_get_with_an_empty_body_signs_the_hash_of_nothing():
    # openssl: printf 'deployer-v2\nGET\ndeploy.example:8443\n/jobs/job-0123456789abcdef\nalice\n1767225600\n
    #                  n7Qk...a3d\n<sha256 of "">'
    headers = signatures.sign_request(
        SECRET,
        method="GET",
        host=HOST,
        path="/jobs/job-0123456789abcdef",
        key_id="alice",
        timestamp=TIMESTAMP,
        nonce="n7Qk2VxW9pLm4RtY8sZa3d",
        body=b"",
    )
    assert headers["X-Deployer-Signature"] == "v2=61eca3510964851bcf464adafc826cb3f67d09c85a9a69db7bd03d339e4b285f"


def test_the_query_string_is_bound_exactly_as_sent():
    assert signatures.request_target("/audit", b"") == "/audit"
    assert signatures.request_target("/audit", b"app=demo&event=deploy.%2A") == "/audit?app=demo&event=deploy.%2A"
    assert signatures.request_target("/audit", "limit=1&app=demo") == "/audit?limit=1&app=demo"  # not reordered
    # The GET /audit example of docs/server.md; openssl:
    #   printf 'deployer-v2\nGET\ndeploy.example:8443\n/audit?app=demo&since=24h&event=deploy.%%2A\nalice\n1767225600\n
    #           n7Qk2VxW9pLm4RtY8sZa3e\n<sha256 of "">' | openssl dgst -sha256 -hmac "$SECRET"
    target = signatures.request_target("/audit", b"app=demo&since=24h&event=deploy.%2A")
    headers = signatures.sign_request(
        SECRET,
        method="GET",
        host=HOST,
        path=target,
        key_id="alice",
        timestamp=TIMESTAMP,
        nonce="n7Qk2VxW9pLm4RtY8sZa3e",
        body=b"",
    )
    assert headers["X-Deployer-Signature"] == "v2=0fb77cdcd1b2680cfac86ddf7f9786b202a57bc4dbda480ea8dc5c2fc9f2e783"


AUDIT_TOKEN = "audit-read-token-3c9e51f0a7d2"


def test_the_audit_token_is_accepted_as_a_bearer_token_only():
    signatures.verify_bearer(AUDIT_TOKEN, f"Bearer {AUDIT_TOKEN}")
    signatures.verify_bearer(AUDIT_TOKEN, f"bearer  {AUDIT_TOKEN} ")


@pytest.mark.parametrize(
    "token, header, message",
    [
        (None, f"Bearer {AUDIT_TOKEN}", "no audit token is configured ([server] audit_token_file or audit_token_env)"),
        (AUDIT_TOKEN, None, "the Authorization header must be: Bearer <token>"),
        (AUDIT_TOKEN, AUDIT_TOKEN, "the Authorization header must be: Bearer <token>"),
        (AUDIT_TOKEN, f"Basic {AUDIT_TOKEN}", "the Authorization header must be: Bearer <token>"),
        (AUDIT_TOKEN, "Bearer ", "the Authorization header must be: Bearer <token>"),
        (AUDIT_TOKEN, f"Bearer {AUDIT_TOKEN[:-1]}", "the bearer token does not match"),
        (AUDIT_TOKEN, f"Bearer {AUDIT_TOKEN}0", "the bearer token does not match"),
        (AUDIT_TOKEN, "Bearer \u00e9t\u00e9", "the bearer token does not match"),
    ],
)
def test_a_wrong_audit_token_is_refused_without_revealing_it(token, header, message):
    with pytest.raises(Unauthorized) as caught:
        signatures.verify_bearer(token, header)
    assert str(caught.value) == message


def signed(**changes):
    headers = {
        "X-Deployer-Key": "alice",
        "X-Deployer-Timestamp": str(TIMESTAMP),
        "X-Deployer-Nonce": NONCE,
        "X-Deployer-Signature": SIGNATURE,
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


def verify(headers, *, method="POST", host=HOST, path="/deploy", body=BODY, now=TIMESTAMP + 10, keys=None):
    signatures.verify_manual(
        keys or {"alice": SECRET},
        signatures.read_signed_headers(headers),
        method=method,
        host=host,
        path=path,
        body=body,
        now=now,
    )


REFUSED = "X-Deployer-Signature does not verify (unknown key id or wrong signature)"
V2_ONLY = "X-Deployer-Signature must be v2=<hex> (v1, which did not bind the Host, is no longer accepted)"


def test_the_documented_example_verifies_within_the_window():
    verify(signed())
    verify(signed(), now=TIMESTAMP + 300)
    verify(signed(), now=TIMESTAMP - 300)


@pytest.mark.parametrize(
    "headers, message",
    [
        (signed(**{"X-Deployer-Key": None}), "missing X-Deployer-Key header"),
        (signed(**{"X-Deployer-Timestamp": None}), "missing X-Deployer-Timestamp header"),
        (signed(**{"X-Deployer-Nonce": None}), "missing X-Deployer-Nonce header"),
        (signed(**{"X-Deployer-Signature": None}), "missing X-Deployer-Signature header"),
        (
            signed(**{"X-Deployer-Timestamp": "1767225600.5"}),
            "X-Deployer-Timestamp must be a unix time in whole seconds",
        ),
        (signed(**{"X-Deployer-Timestamp": "-1"}), "X-Deployer-Timestamp must be a unix time in whole seconds"),
        (signed(**{"X-Deployer-Nonce": "short"}), "X-Deployer-Nonce must be 16 to 128 letters, digits, '-' or '_'"),
        (
            signed(**{"X-Deployer-Nonce": "n7Qk2VxW9pLm4RtY8s/a3c"}),
            "X-Deployer-Nonce must be 16 to 128 letters, digits, '-' or '_'",
        ),
        (signed(**{"X-Deployer-Signature": SIGNATURE[3:]}), V2_ONLY),
        (signed(**{"X-Deployer-Signature": "v1=" + SIGNATURE[3:]}), V2_ONLY),
    ],
)
def test_malformed_headers_are_refused_before_any_secret_is_used(headers, message):
    with pytest.raises(Unauthorized) as caught:
        signatures.read_signed_headers(headers)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"now": TIMESTAMP + 301},
            "the timestamp is more than 300 s away from the server's clock (check the client's clock)",
        ),
        (
            {"now": TIMESTAMP - 301},
            "the timestamp is more than 300 s away from the server's clock (check the client's clock)",
        ),
        ({"keys": {"bob": SECRET}}, REFUSED),
        ({"keys": {"alice": SECRET + "x"}}, REFUSED),
        ({"method": "PUT"}, REFUSED),
        ({"host": "other.example:8443"}, REFUSED),
        ({"host": "deploy.example"}, REFUSED),
        ({"path": "/jobs/job-0123456789abcdef"}, REFUSED),
        ({"body": BODY.replace(b"v1.4.2", b"v1.4.3")}, REFUSED),
    ],
)
def test_a_change_to_any_bound_part_is_refused(change, message):
    with pytest.raises(Unauthorized) as caught:
        verify(signed(), **change)
    assert str(caught.value) == message
    assert SIGNATURE[3:] not in str(caught.value)


def test_an_unknown_key_and_a_stale_timestamp_say_nothing_about_which_keys_exist():
    """The timestamp is judged before the key: a stale request gets one answer whether or not its key exists."""
    answers = {}
    for keys in ({"alice": SECRET}, {"bob": SECRET}):
        for now in (TIMESTAMP + 10, TIMESTAMP + 1000):
            with pytest.raises(Unauthorized) as caught:
                verify(signed(**{"X-Deployer-Signature": SIGNATURE[:-1] + "0"}), keys=keys, now=now)
            answers[(tuple(keys), now)] = str(caught.value)
    assert answers[(("alice",), TIMESTAMP + 10)] == answers[(("bob",), TIMESTAMP + 10)] == REFUSED
    assert answers[(("alice",), TIMESTAMP + 1000)] == answers[(("bob",), TIMESTAMP + 1000)]


def test_a_request_signed_for_one_server_is_refused_by_another_sharing_the_key():
    verify(signed(), host="DEPLOY.example:8443")  # the Host is compared in lower case
    with pytest.raises(Unauthorized):
        verify(signed(), host="deploy-2.example:8443")


@pytest.mark.parametrize(
    "headers",
    [
        signed(**{"X-Deployer-Key": "mallory"}),  # the key id is part of what is signed, too
        signed(**{"X-Deployer-Nonce": "n7Qk2VxW9pLm4RtY8sZa3X"}),
        signed(**{"X-Deployer-Timestamp": str(TIMESTAMP + 1)}),
        signed(**{"X-Deployer-Signature": SIGNATURE[:-1] + "f"}),
    ],
)
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
