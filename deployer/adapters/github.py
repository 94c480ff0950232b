"""HTTP GETs to GitHub's API and storage hosts, through requests; no decisions.

`worker/assets.py` decides where to go (redirects, which headers go where, size caps, checksums);
this adapter only fetches, one hop at a time, and turns every requests error into an AssetError.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import requests

from deployer.errors import AssetError


class Reply:
    """One answer: its status, headers and final URL, and its body as chunks."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.url = response.url
        self.headers: Mapping[str, str] = response.headers

    def chunks(self, size: int) -> Iterator[bytes]:
        try:
            yield from self._response.iter_content(size)
        except requests.RequestException as exc:
            raise AssetError(f"the download broke off: {type(exc).__name__}") from None

    def close(self) -> None:
        self._response.close()


class GitHubHttp:
    """A fresh session that ignores the environment (no .netrc credentials, no proxies) and follows no redirect."""

    def __init__(self, *, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = False

    def get(self, url: str, headers: Mapping[str, str]) -> Reply:
        try:
            return Reply(
                self.session.get(url, headers=dict(headers), allow_redirects=False, stream=True, timeout=self.timeout)
            )
        except requests.RequestException as exc:
            raise AssetError(
                f"cannot download from {(urlsplit(url).hostname or '').lower()}: {type(exc).__name__}"
            ) from None
