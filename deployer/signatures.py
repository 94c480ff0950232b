"""Request signatures: GitHub's webhook signature and the signed manual requests. Pure: no I/O, no clock.

Every comparison of a signature goes through `hmac.compare_digest`, so the time a check takes does
not reveal how much of a guess was right. Errors say which check failed, never the expected value.

The manual scheme (documented in docs/server.md, so a client in any language can sign):

    canonical = "deployer-v2\\n" METHOD "\\n" HOST "\\n" PATH "\\n" KEY_ID "\\n" TIMESTAMP "\\n" NONCE "\\n"
                hex(SHA-256(body))
    X-Deployer-Signature: v2=hex(HMAC-SHA256(secret, canonical))

HOST is the Host header as sent, in lower case, so a request signed for one server cannot be
replayed to another that shares the key. `v1`, which did not bind the Host, is no longer accepted:
keeping it would keep that replay open. PATH includes the query string exactly as sent (see
`request_target`), so a signed GET /audit cannot be replayed with other filters.

Every refusal after the headers parse is one of two answers: the timestamp is outside the window
(checked first, before the key is looked up), or "the signature does not verify", the same for an
unknown key id and a wrong signature, so the answers do not tell which key ids exist.

GET /audit (and a detailed GET /healthz) also take a read-only bearer token (`verify_bearer`),
which no other route accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from secrets import token_hex

from deployer.errors import Unauthorized

GITHUB_HEADER = "X-Hub-Signature-256"
KEY_HEADER = "X-Deployer-Key"
TIMESTAMP_HEADER = "X-Deployer-Timestamp"
NONCE_HEADER = "X-Deployer-Nonce"
SIGNATURE_HEADER = "X-Deployer-Signature"
DELIVERY_HEADER = "X-Deployer-Delivery"  # a notification's id; its signature is `github_signature` of the body
AUTHORIZATION_HEADER = "Authorization"  # Bearer <audit token>

SCHEME = "deployer-v2"
SIGNATURE_PREFIX = "v2="
WINDOW_SECONDS = 300
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
SIGNATURE_REFUSED = f"{SIGNATURE_HEADER} does not verify (unknown key id or wrong signature)"
_UNKNOWN_KEY_SECRET = token_hex(32)


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


# --- GitHub ----------------------------------------------------------------------------------------


def github_signature(secret: str, body: bytes) -> str:
    """The header value GitHub sends: `sha256=` and the HMAC-SHA256 of the raw body."""
    return "sha256=" + _hmac_hex(secret, body)


def verify_github(secret: str | None, body: bytes, header: str | None) -> None:
    """Raise Unauthorized unless `header` is GitHub's signature of exactly these bytes."""
    if not secret:
        raise Unauthorized(
            "webhook deliveries are refused: no GitHub secret is configured "
            "([server] github_secret_file or github_secret_env)"
        )
    if not header:
        raise Unauthorized(f"missing {GITHUB_HEADER} header")
    if not hmac.compare_digest(
        header.strip().encode("utf-8", "replace"), github_signature(secret, body).encode("ascii")
    ):
        raise Unauthorized(f"{GITHUB_HEADER} does not match the body")


# --- signed manual requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedHeaders:
    key_id: str
    timestamp: int
    nonce: str
    signature: str  # "v2=<hex>"


def request_target(path: str, query_string: bytes | str = b"") -> str:
    """The PATH line of the canonical string: the path, then `?` and the query string exactly as sent.

    The query is bound byte for byte, not decoded, re-encoded or sorted: a client signs the very
    text it puts after `?` in its request line (`/audit?app=demo&since=24h`), and changing, adding,
    removing or reordering a parameter breaks the signature. No query, or an empty one, signs the bare path.
    """
    query = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    return f"{path}?{query}" if query else path


def canonical_string(method: str, host: str, path: str, key_id: str, timestamp: int, nonce: str, body: bytes) -> str:
    """What a manual request's signature covers: a replay to another server, route, query or body fails.

    `host` is the Host header (`deploy.example:8443`); `path` is the `request_target`: the path and its query.
    """
    return "\n".join(
        [SCHEME, method.upper(), host.strip().lower(), path, key_id, str(timestamp), nonce, body_sha256(body)]
    )


def manual_signature(secret: str, canonical: str) -> str:
    return SIGNATURE_PREFIX + _hmac_hex(secret, canonical.encode("utf-8"))


def sign_request(
    secret: str, *, method: str, host: str, path: str, key_id: str, timestamp: int, nonce: str, body: bytes
) -> dict[str, str]:
    """The four headers a client sends with a manual request to the server it names in `host`."""
    canonical = canonical_string(method, host, path, key_id, timestamp, nonce, body)
    return {
        KEY_HEADER: key_id,
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: manual_signature(secret, canonical),
    }


def read_signed_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """Parse the four headers; anything missing or malformed is Unauthorized, before any secret is used."""
    values = {}
    for name in (KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
        value = headers.get(name)
        if not value:
            raise Unauthorized(f"missing {name} header")
        values[name] = value.strip()
    if not TIMESTAMP_RE.match(values[TIMESTAMP_HEADER]):
        raise Unauthorized(f"{TIMESTAMP_HEADER} must be a unix time in whole seconds")
    if not NONCE_RE.match(values[NONCE_HEADER]):
        raise Unauthorized(f"{NONCE_HEADER} must be 16 to 128 letters, digits, '-' or '_'")
    if not values[SIGNATURE_HEADER].startswith(SIGNATURE_PREFIX):
        raise Unauthorized(
            f"{SIGNATURE_HEADER} must be v2=<hex> (v1, which did not bind the Host, is no longer accepted)"
        )
    return SignedHeaders(
        key_id=values[KEY_HEADER],
        timestamp=int(values[TIMESTAMP_HEADER]),
        nonce=values[NONCE_HEADER],
        signature=values[SIGNATURE_HEADER],
    )


def check_timestamp(timestamp: int, now: float, window: int = WINDOW_SECONDS) -> None:
    """A request is valid for `window` seconds either side of the server's clock."""
    if abs(now - timestamp) > window:
        raise Unauthorized(
            f"the timestamp is more than {window} s away from the server's clock (check the client's clock)"
        )


def verify_manual(
    secrets: Mapping[str, str],
    signed: SignedHeaders,
    *,
    method: str,
    host: str,
    path: str,
    body: bytes,
    now: float,
    window: int = WINDOW_SECONDS,
) -> None:
    """Timestamp in the window, key known and signature right. The nonce's single use is the queue's to check.

    An unknown key is checked against a throwaway secret, so it costs what a wrong signature costs and
    gets the same answer.
    """
    check_timestamp(signed.timestamp, now, window)
    known = signed.key_id in secrets
    secret = secrets[signed.key_id] if known else _UNKNOWN_KEY_SECRET
    expected = manual_signature(
        secret, canonical_string(method, host, path, signed.key_id, signed.timestamp, signed.nonce, body)
    )
    matches = hmac.compare_digest(signed.signature.encode("utf-8", "replace"), expected.encode("ascii"))
    if not (matches and known):
        raise Unauthorized(SIGNATURE_REFUSED)


def verify_bearer(token: str | None, header: str | None) -> None:
    """Raise Unauthorized unless `header` is `Bearer <token>`: a read-only token, the audit token's for GET /audit
    (and a detailed /healthz), the metrics token's for GET /metrics.

    Both sides are hashed before the constant-time comparison, so not even the token's length shows.
    """
    if not token:
        raise Unauthorized("no audit token is configured ([server] audit_token_file or audit_token_env)")
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized(f"the {AUTHORIZATION_HEADER} header must be: Bearer <token>")
    if not hmac.compare_digest(
        hashlib.sha256(given.strip().encode("utf-8", "replace")).digest(),
        hashlib.sha256(token.encode("utf-8")).digest(),
    ):
        raise Unauthorized("the bearer token does not match")


def nonce_expiry(timestamp: int, now: float, window: int = WINDOW_SECONDS) -> float:
    """Until when a nonce must be remembered: past the last moment its timestamp is still accepted."""
    return max(now, timestamp + window) + window
