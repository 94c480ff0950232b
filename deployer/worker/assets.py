"""An image from a release asset: a `docker save` tarball attached to the GitHub release.

The download URL is built from the configured repository and the asset id, never taken from
the payload. GitHub answers the API URL with a 302 to its storage host; the token goes to the
API host only, never after a redirect to another host. The size is capped while streaming, and
a `<name>.sha256` asset, when the release has one, must match. Before Docker loads the archive,
its manifest must name no image but the app's own, so an asset cannot retag other images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from deployer.config import Config
from deployer.errors import AssetError, DeployerError
from deployer.queue.model import Job

MAX_REDIRECTS = 5
CHECKSUM_MAX_BYTES = 4096
CHUNK = 1024 * 1024
_SHA256_RE = re.compile(r"^([0-9a-fA-F]{64})(\s|$)")


def asset_url(api: str, repository: str, asset_id: int) -> str:
    """GitHub's REST endpoint for one release asset."""
    if isinstance(asset_id, bool) or not isinstance(asset_id, int) or asset_id < 1:
        raise AssetError(f"asset id {asset_id!r} is not a positive whole number")
    return f"{api.rstrip('/')}/repos/{repository}/releases/assets/{asset_id}"


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def redirect_headers(api_url: str, target: str, headers: Mapping[str, str]) -> dict[str, str]:
    """The headers for the next hop: the Authorization header stays only on the API host's own origin."""
    if origin(target) == origin(api_url):
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


def check_redirect(api_url: str, target: str) -> None:
    """A redirect may not downgrade to plain http (unless the API itself is plain http, as in tests)."""
    scheme = urlsplit(target).scheme
    if scheme not in ("https", "http") or (scheme == "http" and urlsplit(api_url).scheme == "https"):
        raise AssetError(f"refusing a redirect of the asset download to a {scheme or 'relative'} URL")


def parse_checksum(text: bytes, name: str) -> str:
    """`sha256sum` output (`<hex>  <file>`) or the bare hex digest."""
    match = _SHA256_RE.match(text.decode("utf-8", "replace").strip())
    if not match:
        raise AssetError(f"{name}.sha256 does not start with a SHA-256 hex digest")
    return match.group(1).lower()


def archive_tags(path: Path) -> list[str]:
    """The image names a `docker save` archive will apply when loaded (from its manifest.json)."""
    try:
        with tarfile.open(path) as archive:
            member = archive.extractfile("manifest.json")
            manifest = json.load(member) if member else None
    except (tarfile.TarError, KeyError, OSError, ValueError) as exc:
        raise AssetError(f"the asset is not a docker save archive: {exc}") from None
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        raise AssetError("the asset must hold exactly one image (docker save of one image)")
    tags = manifest[0].get("RepoTags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise AssetError("the asset's manifest.json has malformed RepoTags")
    return tags


def check_archive_tags(tags: list[str], image: str, tag: str) -> None:
    """An asset may only carry the name of its own release, `image:tag`, or none.

    Another tag of the same repository would be applied too: a v2 asset tagging `image:v1`
    would make a later rollback to v1, which runs the image tagged locally, run v2.
    """
    expected = f"{image}:{tag}"
    others = [t for t in tags if t != expected]
    if others:
        raise AssetError(f"the asset would also tag {', '.join(others[:3])}; only {expected} is allowed")


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    checksum_verified: bool


class HttpReply(Protocol):
    status: int
    url: str
    headers: Mapping[str, str]

    def chunks(self, size: int) -> Iterator[bytes]: ...
    def close(self) -> None: ...


class Http(Protocol):
    """One GET, no redirect followed (adapters/github.py); errors are AssetErrors."""

    def get(self, url: str, headers: Mapping[str, str]) -> HttpReply: ...


class AssetDownloader:
    """Fetches a release's assets through `http`, deciding each redirect and cap itself."""

    def __init__(self, api: str, repository: str, token: str | None, *, http: Http) -> None:
        self.api = api
        self.repository = repository
        self.token = token
        self.http = http

    def fetch(self, asset_id: int, dest: Path, *, max_bytes: int, name: str) -> tuple[int, str]:
        """Stream one asset into `dest`; return its size and SHA-256. Over `max_bytes` is an AssetError."""
        url = asset_url(self.api, self.repository, asset_id)
        headers = {"Accept": "application/octet-stream", "User-Agent": "deployer", "X-GitHub-Api-Version": "2022-11-28"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        reply = self.http.get(url, headers)
        try:
            for _ in range(MAX_REDIRECTS):
                if reply.status not in (301, 302, 303, 307, 308):
                    break
                target = urljoin(reply.url, reply.headers.get("Location", ""))
                check_redirect(url, target)
                headers = redirect_headers(url, target, headers)
                reply.close()
                reply = self.http.get(target, headers)
            if reply.status != 200:
                raise AssetError(
                    f"downloading asset {name} ({asset_id}) of {self.repository} failed: HTTP "
                    f"{reply.status}"
                    + (" (a private repository needs asset.token_file)" if reply.status in (401, 403, 404) else "")
                )
            declared = reply.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise AssetError(f"asset {name} is {declared} bytes, over the limit of {max_bytes}")
            return self._save(reply, dest, max_bytes=max_bytes, name=name)
        finally:
            reply.close()

    @staticmethod
    def _save(reply: HttpReply, dest: Path, *, max_bytes: int, name: str) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in reply.chunks(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise AssetError(f"asset {name} is over the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def download_image(self, asset: Mapping[str, Any], folder: Path, *, max_bytes: int) -> Downloaded:
        """The image archive, checked against its .sha256 companion when the release has one."""
        name = str(asset["name"])
        path = folder / "image.tar"
        size, sha256 = self.fetch(int(asset["id"]), path, max_bytes=max_bytes, name=name)
        verified = False
        if asset.get("checksum_id"):
            checksum_path = folder / "image.tar.sha256"
            try:
                self.fetch(
                    int(asset["checksum_id"]), checksum_path, max_bytes=CHECKSUM_MAX_BYTES, name=f"{name}.sha256"
                )
                expected = parse_checksum(checksum_path.read_bytes(), name)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            finally:
                checksum_path.unlink(missing_ok=True)
            if expected != sha256:
                path.unlink(missing_ok=True)
                raise AssetError(
                    f"{name} does not match {name}.sha256 (got sha256:{sha256[:12]}..., "
                    f"expected sha256:{expected[:12]}...)"
                )
            verified = True
        return Downloaded(path=path, size=size, sha256=sha256, checksum_verified=verified)


ImageLoader = Callable[[Path, str, str], str]  # (archive, image, tag) -> the reference Docker tagged


def load_release_asset(config: Config, job: Job, *, http: Http, load_image: ImageLoader) -> str:
    """The job's release asset, downloaded into its own folder, its tags checked, loaded; the folder goes after."""
    app = config.app(job.app)
    asset = job.source.get("asset")
    if not asset or app.asset is None or app.repository is None or job.tag is None:
        raise DeployerError(f"job {job.id} names no release asset to load", app=app.name)
    folder = Path(config.settings.state_dir) / "assets" / job.id  # a checked id: see row_problem
    downloader = AssetDownloader(config.server.github_api, app.repository, app.asset.token, http=http)
    try:
        downloaded = downloader.download_image(asset, folder, max_bytes=app.asset.max_bytes)
        check_archive_tags(archive_tags(downloaded.path), app.image, job.tag)
        return load_image(downloaded.path, app.image, job.tag)
    finally:
        with contextlib.suppress(OSError):
            for entry in folder.iterdir():
                entry.unlink()
            folder.rmdir()
