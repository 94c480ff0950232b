"""One cheap question to a registry: is this tag's manifest there? A HEAD on its v2 API, with the app's login.

A registry that answers 401 with a Bearer challenge (Docker Hub, GitHub's and most hosted ones) gets its
token first, with the same login. The scheme is Docker's: plain HTTP for a registry on a loopback address,
HTTPS for any other. Every failure is an answer (ManifestAnswer), never an exception: the job's policy
decides what an answer means (deployer/plan/image_wait.py).
"""

from __future__ import annotations

import re

import requests

from deployer.config import AppConfig, RegistryAuth
from deployer.plan.image_wait import ManifestAnswer

ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
DOCKER_HUB = "registry-1.docker.io"
_PLAIN_HTTP_HOSTS = ("localhost", "127.", "[::1]")
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


def manifest_url(app: AppConfig, tag: str) -> str:
    registry = app.registry
    repository = app.image[len(registry) + 1 :] if registry else app.image
    if registry is None:
        registry = DOCKER_HUB
        repository = repository if "/" in repository else f"library/{repository}"
    scheme = "http" if registry.startswith(_PLAIN_HTTP_HOSTS) else "https"
    return f"{scheme}://{registry}/v2/{repository}/manifests/{tag}"


def _answer(status: int) -> ManifestAnswer:
    if status == 200:
        return ManifestAnswer.PRESENT
    if status == 404:
        return ManifestAnswer.MISSING
    if status in (401, 403):
        return ManifestAnswer.REFUSED
    return ManifestAnswer.OTHER


def _token(challenge: str, login: tuple[str, str] | None, timeout: float) -> str | None:
    """A Bearer token for the challenge's realm, service and scope; None when there is none to get."""
    scheme, _, rest = challenge.partition(" ")
    if scheme.lower() != "bearer":
        return None
    fields = dict(_CHALLENGE_RE.findall(rest))
    realm = fields.pop("realm", None)
    if not realm:
        return None
    answer = requests.get(realm, params=fields, auth=login, timeout=timeout)
    if answer.status_code != 200:
        return None
    body = answer.json()
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    return token if isinstance(token, str) else None


def manifest_answer(
    app: AppConfig, tag: str, auth: RegistryAuth | None = None, *, timeout: float = 5.0
) -> ManifestAnswer:
    """What the registry says of `app`'s image at `tag`: present, missing, refused or something else."""
    url = manifest_url(app, tag)
    login = (auth.username, auth.password) if auth else None
    headers = {"Accept": ACCEPT, "User-Agent": "deployer"}
    try:
        response = requests.head(url, headers=headers, auth=login, timeout=timeout, allow_redirects=True)
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code == 401 and challenge:
            token = _token(challenge, login, timeout)
            if token is None:
                return ManifestAnswer.REFUSED
            response = requests.head(
                url, headers={**headers, "Authorization": f"Bearer {token}"}, timeout=timeout, allow_redirects=True
            )
    except (requests.RequestException, ValueError):
        return ManifestAnswer.OTHER
    return _answer(response.status_code)
