"""The report loop's HTTP: one request to GitHub's API or a notification target, its answer as plain values.

A failed request is an answer too (status None), never an exception: the outbox decides what to do with it. The
problem it carries names the host and the error's type only: never a header, so never the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import requests

from deployer.plan.report import HttpAnswer


class ReportHttp:
    """A session that ignores the environment (no .netrc credentials, no proxies) and follows no redirect; every
    request bounded by `timeout` seconds to connect and again to each read."""

    def __init__(self, *, timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = False

    def __call__(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> HttpAnswer:
        host = (urlsplit(url).hostname or "").lower()
        try:
            response = self.session.request(
                method,
                url,
                headers={**headers, **({"Content-Type": "application/json"} if body is not None else {})},
                data=body,
                allow_redirects=False,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            return HttpAnswer(None, problem=f"no answer from {host}: {type(exc).__name__}")
        try:
            parsed = response.json() if response.content else None
        except ValueError:
            parsed = None
        return HttpAnswer(
            response.status_code,
            parsed,
            retry_after=response.headers.get("Retry-After"),
            rate_reset=response.headers.get("X-RateLimit-Reset") if response.status_code in (403, 429) else None,
            problem=f"HTTP {response.status_code} from {host}",
        )
