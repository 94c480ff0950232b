"""Who is looking at the console: a viewer signed in with a password, or named by a trusted proxy's header.

A proxy's first request naming a viewer starts a session for them, as a password's sign-in does (`via=proxy` in
its audit entry); a header naming someone else than the session ends that session and starts theirs.

The session is Flask's signed cookie, keyed by `[console] session_key_file`: it holds the viewer's name, when
they signed in, a fingerprint of their password hash (a changed or removed line ends their sessions) and the
form token. It expires `session_hours` after sign-in, whatever the cookie says. Sign-in attempts are limited
per source address, counted in the queue database so that every gunicorn worker counts the same ones; each
sign-in, refusal and sign-out is audited with the source and the name, never the password or the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from deployer.config import ConsoleConfig
from deployer.config.fields import KEY_ID_RE
from deployer.journal import Journal
from deployer.passwords import verify_or_waste
from deployer.queue.attempts import AttemptStore

SIGNIN_BURST = 5  # the sixth quick attempt from one address is answered 429
SIGNIN_PER_SECOND = 1 / 60
MAX_PASSWORD = 1024
COOKIE_NAME = "deployer_console"


class Gate:
    """The console's sign-in rules, over its config, the journal and the clock."""

    def __init__(
        self, console: ConsoleConfig, journal: Journal, clock: Callable[[], float], attempts: AttemptStore
    ) -> None:
        self.console = console
        self.journal = journal
        self.clock = clock
        self.attempts = attempts  # in the queue database: every gunicorn worker counts the same attempts
        self.proxies = [ipaddress.ip_network(network) for network in console.trusted_proxies]

    def admit(
        self, session: Mapping[str, Any], headers: Mapping[str, str], source: str | None
    ) -> tuple[str | None, dict[str, Any] | None]:
        """The viewer of a request (None: signed out), and the session to start when a trusted proxy names
        someone the session does not hold: that is the proxy's sign-in, audited once, not on every request.
        A session of someone else ends first (audited as a sign-out)."""
        proxied = self.proxied_viewer(headers, source)
        held = self.session_viewer(session, proxied=proxied is not None)
        if proxied is None or held == proxied:
            return held, None
        if held is not None:
            self.sign_out(held, source, reason="the proxy names another viewer")
        self.journal.record(
            "console.signin", actor=f"console:{proxied}", viewer=proxied, source=source, outcome="ok", via="proxy"
        )
        return proxied, {"viewer": proxied, "at": self.clock(), "via": "proxy", "csrf": new_csrf()}

    def session_viewer(self, session: Mapping[str, Any], *, proxied: bool = False) -> str | None:
        """The viewer a live session holds. A proxy's session counts only on a request the proxy sent (`proxied`);
        a password's only while the viewer's hash line is the one it was signed in with."""
        name, at = session.get("viewer"), session.get("at")
        if not isinstance(name, str) or not isinstance(at, (int, float)):
            return None
        if not 0 <= self.clock() - at < self.console.session_hours * 3600:
            return None  # expired, or signed in the future (a clock set back)
        if session.get("via") == "proxy":
            return name if proxied else None
        if name not in self.console.viewers:
            return None
        if not hmac.compare_digest(str(session.get("hash", "")), fingerprint(self.console.viewers[name])):
            return None
        return name

    def proxied_viewer(self, headers: Mapping[str, str], source: str | None) -> str | None:
        """The name a trusted proxy sends, believed only from the proxies' addresses."""
        header = self.console.trusted_proxy_header
        if header is None or not self.from_proxy(source):
            return None
        name = (headers.get(header) or "").strip()
        return name if KEY_ID_RE.fullmatch(name) else None

    def from_proxy(self, source: str | None) -> bool:
        try:
            address = ipaddress.ip_address(source or "")
        except ValueError:
            return False
        return any(address in network for network in self.proxies)

    def throttled(self, source: str | None) -> int | None:
        """Spend one of `source`'s sign-in attempts; the seconds to wait when it has none left."""
        return self.attempts.take(source, self.clock(), burst=SIGNIN_BURST, per_second=SIGNIN_PER_SECOND)

    def sign_in(self, name: str, password: str, source: str | None) -> dict[str, Any] | None:
        """The new session's content when `password` is `name`'s; None (and a refusal audited) when not."""
        known = name if KEY_ID_RE.fullmatch(name) else None
        encoded = self.console.viewers.get(known) if known else None
        if len(password) <= MAX_PASSWORD and verify_or_waste(password, encoded) and known is not None:
            self.journal.record("console.signin", actor=f"console:{known}", viewer=known, source=source, outcome="ok")
            return {"viewer": known, "at": self.clock(), "hash": fingerprint(encoded or ""), "csrf": new_csrf()}
        shown = name[:64] if name.isprintable() else name[:64].encode("unicode_escape").decode("ascii")
        self.journal.record(
            "console.signin_failed", viewer=shown, source=source, outcome="refused", reason="wrong name or password"
        )
        return None

    def sign_out(self, name: str, source: str | None, *, reason: str | None = None) -> None:
        extra = {"reason": reason} if reason else {}
        self.journal.record(
            "console.signout", actor=f"console:{name}", viewer=name, source=source, outcome="ok", **extra
        )


def fingerprint(encoded: str) -> str:
    """A short digest of a viewer's hash line: the session holds this, never the line."""
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:16]


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(session: Mapping[str, Any], offered: str | None) -> bool:
    expected = session.get("csrf")
    return isinstance(expected, str) and isinstance(offered, str) and hmac.compare_digest(expected, offered)


def safe_next(target: str | None) -> str | None:
    """Where to go after signing in: a console path of this host only (never `//elsewhere` or a scheme)."""
    if not target or not target.startswith("/console/") or "//" in target or "\\" in target:
        return None
    return target if target.isprintable() and len(target) <= 500 else None
