"""The console's password hashes: scrypt with a random salt, in a self-describing line. Pure: no I/O, no clock.

    scrypt$N$r$p$SALT$HASH      (N, r, p in decimal; SALT and HASH in hex)

The line carries its own cost, so a hash made with today's cost still verifies after the default grows.
`deployer console passwd NAME` prints one; the config holds only these, never a password. Every comparison
goes through `hmac.compare_digest`, and an unknown name costs one hash too (`verify_or_waste`), so neither
the time of a refusal nor its answer tells which names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

SCHEME = "scrypt"
# OWASP's scrypt settings at 32 MiB: N=2^15, r=8, p=3 (about a tenth of a second a sign-in).
COST_N, COST_R, COST_P = 2**15, 8, 3
SALT_BYTES, HASH_BYTES = 16, 32
# Bounds on what a config may ask for: a line with N=2^30 would make each sign-in take a gigabyte.
MAX_N, MAX_R, MAX_P = 2**20, 32, 16
HASH_RE = re.compile(r"^scrypt\$([0-9]{1,8})\$([0-9]{1,3})\$([0-9]{1,3})\$([0-9a-f]{16,128})\$([0-9a-f]{32,128})$")


def hash_password(
    password: str, *, n: int = COST_N, r: int = COST_R, p: int = COST_P, salt: bytes | None = None
) -> str:
    """The line to put in the config for `password`."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p, HASH_BYTES)
    return f"{SCHEME}${n}${r}${p}${salt.hex()}${digest.hex()}"


def hash_problem(encoded: str) -> str | None:
    """Why `encoded` is not a hash line this module verifies; None when it is one."""
    match = HASH_RE.fullmatch(encoded)
    if match is None:
        return "must be a line printed by `deployer console passwd NAME` (scrypt$N$r$p$salt$hash)"
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if n < 2 or n & (n - 1) or n > MAX_N or not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        return f"its cost is out of bounds: N a power of two up to {MAX_N}, r from 1 to {MAX_R}, p from 1 to {MAX_P}"
    if len(match.group(5)) % 2 or len(match.group(4)) % 2:
        return "its salt and hash must be whole bytes of hex"
    return None


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` is the one `encoded` was made from; False for a line that is not a valid hash."""
    if hash_problem(encoded) is not None:
        return False
    _, n, r, p, salt, digest = encoded.split("$")
    expected = bytes.fromhex(digest)
    computed = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p), len(expected))
    return hmac.compare_digest(computed, expected)


def verify_or_waste(password: str, encoded: str | None) -> bool:
    """`verify_password`, spending the same work when there is no hash to check (an unknown name)."""
    if encoded is None:
        verify_password(password, hash_password("", salt=b"\0" * SALT_BYTES))
        return False
    return verify_password(password, encoded)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=128 * r * n * p + 2**20
    )
